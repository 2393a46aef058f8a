"""Bounded redelivery and dead letters: nothing dropped silently, nothing retried forever."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys

import nats
import pytest
from nats.aio.msg import Msg

from clm.contracts import NodeCapabilities, RequestMigration, streams, subjects
from clm.runtime.delivery import H_CAUSE, H_DELIVERIES, H_REASON, H_SUBJECT
from clm.runtime.errors import PermanentError
from tests.integration import crashing_consumer
from tests.integration.support import eventually, fetch_from_stream, make_app
from tests.kit.nats_server import NatsServer


async def _dead_letters(url: str, durable: str, count: int, timeout: float = 10.0) -> list[Msg]:
    return await fetch_from_stream(
        url, subjects.dead_letter(durable), streams.DEAD_LETTERS.name, count, timeout
    )


async def _settled(url: str, durable: str) -> bool:
    """Nothing pending, unacked or waiting for redelivery on the consumer."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(streams.EVENTS.name, durable)
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


def _caps(node: str) -> NodeCapabilities:
    return NodeCapabilities(node=node, agent_version="t", arch="amd64", probe_ok=True)


async def test_malformed_payload_is_dead_lettered_and_service_keeps_running(
    nats_server: NatsServer,
) -> None:
    app = make_app(nats_server.url)
    handled: list[str] = []

    @app.consumer(
        NodeCapabilities, durable="caps", filter_subject=subjects.ALL_NODE_CAPABILITIES, stream=streams.EVENTS
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        handled.append(caps.node)

    await app.start()
    try:
        bad = [
            b"{not json",
            b'{"kind": "NodeCapabilities", "node": "Bad_Name", "agent_version": "1",'
            b' "arch": "amd64", "probe_ok": true}',
            b'{"kind": "RequestMigration", "namespace": "a", "pod": "b"}',
        ]
        for payload in bad:
            await app.js.publish(subjects.node_capabilities("n1"), payload)
        await app.publish(_caps("still-working"))

        letters = await _dead_letters(nats_server.url, "caps", len(bad))
        assert [m.data for m in letters] == bad  # the original bytes, unchanged
        reasons = [m.headers[H_REASON] for m in letters]
        assert "not valid JSON" in reasons[0]
        assert "invalid NodeCapabilities: node" in reasons[1]
        assert "'RequestMigration' is not accepted here" in reasons[2]
        assert {m.headers[H_CAUSE] for m in letters} == {"malformed"}
        assert all(m.headers[H_SUBJECT] == "clm.events.node.n1.capabilities" for m in letters)

        await eventually(lambda: handled == ["still-working"], what="the valid message")
        assert app.readiness()[0]
        dead = app.metrics.dead_letters.labels("caps", "malformed")._value.get()
        assert dead == 3
    finally:
        await app.stop()


async def test_failing_handler_is_retried_with_backoff_then_dead_lettered(
    nats_server: NatsServer,
) -> None:
    app = make_app(nats_server.url, max_deliver=3, redelivery_backoff_seconds=[0.2, 0.4])
    attempts: list[float] = []

    @app.consumer(
        NodeCapabilities,
        durable="flaky",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if caps.node == "recovers" and len(attempts) >= 2:
            return
        raise RuntimeError(f"cannot handle {caps.node}")

    await app.start()
    try:
        await app.publish(_caps("never-works"))
        letters = await _dead_letters(nats_server.url, "flaky", 1)
        assert len(attempts) == 3  # exactly max_deliver tries, not forever
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.18 and gaps[1] >= 0.38  # the backoff was honoured
        assert letters[0].headers[H_CAUSE] == "handler-error"
        assert letters[0].headers[H_DELIVERIES] == "3"
        assert "RuntimeError: cannot handle never-works" in letters[0].headers[H_REASON]

        attempts.clear()
        await app.publish(_caps("recovers"))
        await eventually(lambda: len(attempts) == 2, what="a retry that succeeds")
        # Acked on success: the consumer has nothing left to deliver, now or later.
        await eventually(lambda: _settled(nats_server.url, "flaky"), what="the success acked")
        assert len(attempts) == 2
    finally:
        await app.stop()


async def test_permanent_error_goes_straight_to_dead_letters(nats_server: NatsServer) -> None:
    app = make_app(nats_server.url)
    calls: list[str] = []

    @app.consumer(
        NodeCapabilities,
        durable="strict",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        calls.append(caps.node)
        raise PermanentError(f"node {caps.node} does not exist")

    await app.start()
    try:
        await app.publish(_caps("ghost"))
        letters = await _dead_letters(nats_server.url, "strict", 1)
        assert calls == ["ghost"]
        assert letters[0].headers[H_CAUSE] == "rejected"
        assert letters[0].headers[H_REASON] == "node ghost does not exist"
    finally:
        await app.stop()


@pytest.mark.parametrize("target", ["event", "command"])
async def test_handler_that_keeps_crashing_the_process_is_dead_lettered(
    nats_server: NatsServer, target: str
) -> None:
    """The process dies on each delivery; after max_deliver JetStream gives up and the next
    incarnation turns the server's MAX_DELIVERIES advisory into a dead letter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    publisher = make_app(nats_server.url, name="publisher")
    await publisher.start()
    poison = _caps("poison") if target == "event" else RequestMigration(namespace="games", pod="poison")
    await publisher.publish(poison)
    for _ in range(crashing_consumer.MAX_DELIVER):
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tests.integration.crashing_consumer", nats_server.url, target],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 17, proc.stdout + proc.stderr
        assert f"got {poison.kind}, crashing" in proc.stdout
        await asyncio.sleep(1.2)  # ack_wait expires: JetStream would redeliver
    # A healthy incarnation binds the same durable consumer: it never sees the message
    # again, but moves it to the dead letters when JetStream gives up.
    survivor = crashing_consumer.build(nats_server.url, target)
    await survivor.start()
    try:
        letters = await _dead_letters(nats_server.url, crashing_consumer.DURABLE, 1, timeout=15)
        assert len(letters) == 1
        assert letters[0].headers[H_CAUSE] == "max-deliveries"
        assert type(poison).model_validate_json(letters[0].data) == poison
        stream = crashing_consumer.TARGETS[target][2].name
        if stream == streams.COMMANDS.name:
            # Nobody will ack it again: it is removed from the work queue, not left to rot.
            await eventually(lambda: _stream_messages(survivor, stream), what="work queue to empty")
    finally:
        await survivor.stop()
        await publisher.stop()


async def _stream_messages(app, stream: str) -> bool:
    return (await app.js.stream_info(stream)).state.messages == 0
