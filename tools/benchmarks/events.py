"""tools/bench events: CLM events through a real JetStream, end to end.

A publisher (this process) sends events with ServiceApp.publish; a consumer in a separate
process takes them through the full runtime path (durable pull consumer, contract decode,
delivery-policy middleware, explicit ack). Reported per row: publish rate, consume rate
and the publish-to-handler latency percentiles.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from datetime import UTC, datetime
from typing import Any

from clm.contracts import MigrationFinished, NodeDrained, streams, subjects
from clm.contracts.examples import examples
from clm.runtime import ServiceApp, ServiceSettings
from tests.kit.nats_server import NatsServer
from tools.console.report import percentile


def _settings(url: str) -> ServiceSettings:
    return ServiceSettings(nats_url=url, http_host="127.0.0.1", http_port=0)


def _consumer_process(url: str, durable: str, count: int, batch: int, ready: Any, conn: Any) -> None:
    async def run() -> None:
        app = ServiceApp(
            name="bench-consumer", version="bench", settings=_settings(url), description="benchmark consumer"
        )
        latencies: list[float] = []
        seen: set[str] = set()
        done = asyncio.Event()
        first: list[float] = []

        @app.consumer(
            [NodeDrained, MigrationFinished],
            durable=durable,
            filter_subject=f"{subjects.EVENTS_PREFIX}.>",
            stream=streams.EVENTS,
            batch_size=batch,
        )
        async def on_event(event: NodeDrained | MigrationFinished) -> None:
            now = time.time()
            if not first:
                first.append(time.perf_counter())
            latencies.append(now - event.occurred_at.timestamp())
            seen.add(event.message_id)
            if len(seen) >= count:
                done.set()

        await app.start()
        ready.set()
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - first[0]
        await app.stop()
        # Every delivery counted: a redelivered or duplicated event shows as handled > distinct.
        conn.send((latencies, elapsed, len(seen)))

    asyncio.run(run())


async def _publish(url: str, kind: str, count: int, window: int) -> float:
    app = ServiceApp(
        name="bench-publisher", version="bench", settings=_settings(url), description="benchmark publisher"
    )
    await app.start()
    template = next(m for m in examples() if m.kind == kind)
    sem = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with sem:
            event = template.model_copy(
                update={"message_id": f"bench-{kind}-{i}", "occurred_at": datetime.now(UTC)}
            )
            await app.publish(event)

    started = time.perf_counter()
    if window == 1:
        for i in range(count):
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    await app.stop()
    return elapsed


def run_case(kind: str, count: int, window: int, batch: int) -> dict[str, Any]:
    with NatsServer() as server:
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        parent, child = ctx.Pipe()
        consumer = ctx.Process(
            target=_consumer_process, args=(server.url, "bench", count, batch, ready, child)
        )
        consumer.start()
        if not ready.wait(60):
            consumer.kill()
            raise RuntimeError("benchmark consumer did not start")
        publish_seconds = asyncio.run(_publish(server.url, kind, count, window))
        if not parent.poll(timeout=300):
            consumer.kill()
            raise RuntimeError("benchmark consumer did not finish")
        latencies, consume_seconds, distinct = parent.recv()
        consumer.join(30)
    latencies.sort()
    return {
        "event": kind,
        "events": count,
        "handled": len(latencies),
        "distinct_handled": distinct,
        "publish_window": window,
        "consumer_batch": batch,
        "published_per_s": count / publish_seconds,
        "consumed_per_s": count / consume_seconds,
        "p50_latency_ms": percentile(latencies, 50) * 1000,
        "p99_latency_ms": percentile(latencies, 99) * 1000,
        "max_latency_ms": latencies[-1] * 1000,
    }


CASES = [
    # (event kind, count, publishes in flight, consumer fetch batch)
    ("NodeDrained", 3000, 1, 16),
    ("NodeDrained", 20000, 256, 16),
    ("NodeDrained", 20000, 256, 128),
    ("MigrationFinished", 20000, 256, 128),
]


def run(*, quick: bool = False) -> list[dict[str, Any]]:
    cases = [(k, max(200, n // 20), w, b) for k, n, w, b in CASES] if quick else CASES
    return [run_case(*case) for case in cases]
