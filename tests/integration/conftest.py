from collections.abc import Iterator

import pytest

# A skip fails the run under CI (see ci_skips.py).
from tests.integration.ci_skips import pytest_runtest_makereport  # noqa: F401
from tests.kit.nats_server import NatsServer
from tests.kit.segment import Segment, make_segment


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port, in a temp dir."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def segment() -> Iterator[Segment]:
    """Nodes A and B and a client host on one bridge (real network namespaces)."""
    with make_segment() as seg:
        yield seg
