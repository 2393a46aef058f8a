"""`clm events [--follow]`: the migration events on NATS (the eight documented reasons),
from the start of the events stream; with --follow it keeps printing new ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from clm.contracts import streams, subjects
from clm.contracts.events import MIGRATION_EVENT_ADAPTER, MigrationEvent
from tools.console.nats_connect import connect

# How long a stream with nothing (more) in it is waited on before `clm events` returns.
QUIET_SECONDS = 1.0


def render(event: MigrationEvent) -> str:
    when = event.occurred_at.astimezone(UTC).strftime("%H:%M:%S")
    where = (
        f"{event.source_node} -> {event.destination_node}" if event.destination_node else event.source_node
    )
    text = f"{when}  {event.namespace}/{event.migration}  {event.kind:<21}  {event.pod} {where}"
    return f"{text}: {event.message}" if event.message else text


async def stream_events(
    url: str,
    show: Callable[[MigrationEvent, bytes], None],
    *,
    follow: bool,
    stop: asyncio.Event | None = None,
) -> int:
    """Calls `show` for each migration event in order; returns how many were shown."""
    nc = await connect(url)
    shown = 0
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            subjects.ALL_MIGRATION_EVENTS,
            stream=streams.EVENTS.name,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=QUIET_SECONDS)
            except nats.errors.TimeoutError:
                if follow:
                    continue
                break
            show(MIGRATION_EVENT_ADAPTER.validate_json(msg.data), msg.data)
            shown += 1
            if not follow and msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return shown
