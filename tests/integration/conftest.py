from collections.abc import Iterator

import pytest

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
