"""Stopping a service lets in-flight messages finish and be acked."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import ConsumerInfo

from clm.contracts import NodeCapabilities, streams, subjects
from tests.integration.support import eventually, make_app
from tests.kit.nats_server import NatsServer


async def app_consumer_info(url: str, durable: str) -> ConsumerInfo:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info(streams.EVENTS.name, durable)
    finally:
        await nc.close()


def _app(url: str, log: list[str], delay: float):
    app = make_app(url, name="drain")

    @app.consumer(
        NodeCapabilities,
        durable="drain",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        log.append(f"start {caps.node}")
        await asyncio.sleep(delay)
        log.append(f"done {caps.node}")

    return app


async def test_stop_drains_in_flight_handlers(nats_server: NatsServer) -> None:
    log: list[str] = []
    app = _app(nats_server.url, log, delay=1.0)
    await app.start()
    await app.publish(NodeCapabilities(node="slow", agent_version="t", arch="amd64", probe_ok=True))
    await eventually(lambda: "start slow" in log, what="handler to start")
    await app.stop()
    assert log == ["start slow", "done slow"]

    # It was acked before the process let go: the consumer holds nothing to deliver again,
    # and a new instance, handed a fresh message, handles only that one.
    info = await app_consumer_info(nats_server.url, "drain")
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    again: list[str] = []
    second = _app(nats_server.url, again, delay=0)
    await second.start()
    await second.publish(NodeCapabilities(node="next", agent_version="t", arch="amd64", probe_ok=True))
    await eventually(lambda: "done next" in again, what="the new instance's handler")
    await second.stop()
    assert again == ["start next", "done next"]
