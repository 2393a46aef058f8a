"""Every message kind through a real JetStream; dedup by Nats-Msg-Id; stream declaration."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy

from clm.contracts import REGISTRY, Message, decode, streams, subjects
from clm.contracts.examples import examples
from clm.runtime.jetstream import declare_streams
from tests.integration.support import eventually, make_app
from tests.kit.nats_server import NatsServer

EVENT_KINDS = [m for m in REGISTRY.values() if m.__module__.endswith(".events")]
COMMAND_KINDS = [m for m in REGISTRY.values() if m.__module__.endswith(".commands")]


async def test_every_message_round_trips_through_jetstream(nats_server: NatsServer) -> None:
    app = make_app(nats_server.url)
    received: dict[str, Message] = {}

    @app.consumer(
        EVENT_KINDS, durable="all-events", filter_subject=f"{subjects.EVENTS_PREFIX}.>", stream=streams.EVENTS
    )
    async def on_event(message: Message) -> None:
        received[message.message_id] = message

    @app.consumer(
        COMMAND_KINDS,
        durable="all-commands",
        filter_subject=f"{subjects.COMMANDS_PREFIX}.>",
        stream=streams.COMMANDS,
    )
    async def on_command(message: Message) -> None:
        received[message.message_id] = message

    async def on_plain(msg: Msg) -> None:
        message = decode(msg.data)
        received[message.message_id] = message

    await app.start()
    try:
        # Progress is not stored: it goes on plain NATS, to whoever listens then.
        await app.nc.subscribe(f"{subjects.PROGRESS_PREFIX}.>", cb=on_plain)
        sent = examples()
        for message in sent:
            if not message.STORED:
                with pytest.raises(ValueError, match="belongs to no CLM stream"):
                    await app.publish(message)
                await app.announce(message)
                continue
            ack = await app.publish(message)
            assert not ack.duplicate
            assert ack.stream == streams.stream_for(message.subject()).name
        assert any(not m.STORED for m in sent), "the examples hold a plain NATS kind"
        await eventually(lambda: len(received) == len(sent), what="all examples to arrive")
        for message in sent:
            assert received[message.message_id] == message, message.kind
        assert {m.kind for m in received.values()} == set(REGISTRY)
    finally:
        await app.stop()


async def test_one_logical_event_is_stored_once(nats_server: NatsServer) -> None:
    app = make_app(nats_server.url)
    await app.start()
    try:
        event = examples()[1]
        first = await app.publish(event)
        again = await app.publish(event)  # a retried publish of the same logical event
        assert not first.duplicate
        assert again.duplicate
        info = await app.js.stream_info(streams.EVENTS.name)
        assert info.state.messages == 1
        # A different logical event with identical content but its own id is stored.
        await app.publish(event.model_copy(update={"message_id": "other-id"}))
        info = await app.js.stream_info(streams.EVENTS.name)
        assert info.state.messages == 2
    finally:
        await app.stop()


async def test_streams_are_declared_idempotently(nats_server: NatsServer) -> None:
    # Services start together: separate connections race to create the same streams, and
    # every one of them must come up (the loser of a create takes the update path).
    connections = [await nats.connect(nats_server.url) for _ in range(10)]
    try:
        js = connections[0].jetstream()
        for _round in range(10):
            for info in await js.streams_info():
                await js.delete_stream(str(info.config.name))
            await asyncio.gather(
                *(declare_streams(nc.jetstream(), streams.ALL, replicas=1) for nc in connections)
            )
        await declare_streams(js, streams.ALL, replicas=1)
        events = await js.stream_info(streams.EVENTS.name)
        commands = await js.stream_info(streams.COMMANDS.name)
        assert events.config.retention == RetentionPolicy.LIMITS
        assert commands.config.retention == RetentionPolicy.WORK_QUEUE
        assert events.config.duplicate_window == streams.EVENTS.duplicate_window_seconds
        assert sorted(str(s.config.name) for s in await js.streams_info()) == sorted(
            s.name for s in streams.ALL
        )
    finally:
        for nc in connections:
            await nc.close()
