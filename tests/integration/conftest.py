from collections.abc import Iterator

import pytest

from clm.testing.nats_server import NatsServer


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port, in a temp dir."""
    with NatsServer() as server:
        yield server
