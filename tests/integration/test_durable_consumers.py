"""A durable pull consumer that is stopped and restarted loses nothing."""

from __future__ import annotations

import asyncio

from clm.contracts import NodeCapabilities, streams, subjects
from tests.integration.support import eventually, make_app
from tests.kit.nats_server import NatsServer


def _caps(i: int) -> NodeCapabilities:
    return NodeCapabilities(node=f"node-{i}", agent_version="t", arch="amd64", probe_ok=True)


def _consumer_app(url: str, seen: list[str]):
    app = make_app(url, name="consumer")

    @app.consumer(
        NodeCapabilities,
        durable="restart-test",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        seen.append(caps.node)

    return app


async def test_restarted_durable_consumer_gets_everything(nats_server: NatsServer) -> None:
    publisher = make_app(nats_server.url, name="publisher")
    await publisher.start()
    seen: list[str] = []
    try:
        consumer = _consumer_app(nats_server.url, seen)
        await consumer.start()
        for i in range(50):
            await publisher.publish(_caps(i))
        await eventually(lambda: len(seen) == 50, what="first 50")
        await consumer.stop()

        # While the consumer is down, more events arrive.
        for i in range(50, 120):
            await publisher.publish(_caps(i))

        consumer = _consumer_app(nats_server.url, seen)
        await consumer.start()
        await eventually(lambda: len(set(seen)) == 120, what="all 120 after restart")
        await consumer.stop()
        assert sorted(set(seen)) == sorted(f"node-{i}" for i in range(120))
        # Acked messages are not delivered again after the restart.
        assert len(seen) == 120
    finally:
        await publisher.stop()


async def test_nats_server_restart_loses_nothing(nats_server: NatsServer) -> None:
    """JetStream's file store keeps what was published across a server restart."""
    publisher = make_app(nats_server.url, name="publisher")
    await publisher.start()
    for i in range(20):
        await publisher.publish(_caps(i))
    await publisher.stop()
    nats_server.stop()
    nats_server.start()
    seen: list[str] = []
    consumer = _consumer_app(nats_server.url, seen)
    await consumer.start()
    try:
        await eventually(lambda: len(set(seen)) == 20, what="20 messages after server restart")
    finally:
        await consumer.stop()


async def test_no_message_is_handled_before_the_before_consuming_hooks_end(nats_server: NatsServer) -> None:
    """What a restarted agent settles first (the IP agent's reconcile) is done before any
    waiting command reaches a handler: the soak saw both touch one pod at once."""
    publisher = make_app(nats_server.url, name="publisher")
    await publisher.start()
    try:
        for i in range(5):
            await publisher.publish(_caps(i))
        order: list[str] = []
        app = make_app(nats_server.url, name="consumer")

        @app.before_consuming
        async def settle() -> None:
            order.append("settle begins")
            await asyncio.sleep(1.0)  # long enough for waiting messages to be fetched, if bound
            order.append("settle ends")

        @app.consumer(
            NodeCapabilities,
            durable="before-consuming-test",
            filter_subject=subjects.ALL_NODE_CAPABILITIES,
            stream=streams.EVENTS,
        )
        async def on_caps(caps: NodeCapabilities) -> None:
            order.append(caps.node)

        await app.start()
        try:
            await eventually(lambda: len(order) == 7, what="the hook and all five messages")
            assert order[:2] == ["settle begins", "settle ends"], order
        finally:
            await app.stop()
    finally:
        await publisher.stop()
