"""Stopping a service lets in-flight messages finish and be acked."""

from __future__ import annotations

import asyncio

from clm.contracts import NodeCapabilities, streams, subjects
from tests.integration.support import eventually, make_app
from tests.kit.nats_server import NatsServer


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

    # It was acked before the process let go: a new instance does not get it again.
    again: list[str] = []
    second = _app(nats_server.url, again, delay=0)
    await second.start()
    await asyncio.sleep(1.5)
    await second.stop()
    assert again == []
