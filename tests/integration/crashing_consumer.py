"""A consumer process that dies (os._exit) on every message: a handler that never finishes.

Run as `python -m tests.integration.crashing_consumer NATS_URL event|command`; used by test_dead_letters.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from clm.contracts import Message, NodeCapabilities, RequestMigration, StreamSpec, streams, subjects
from tests.integration.support import make_app

DURABLE = "crash-test"
MAX_DELIVER = 2
SETTINGS: dict[str, Any] = {"max_deliver": MAX_DELIVER, "ack_wait_seconds": 1.0}
# What the crashing consumer reads: an event (limits stream) or a command (work queue).
TARGETS: dict[str, tuple[type[Message], str, StreamSpec]] = {
    "event": (NodeCapabilities, subjects.ALL_NODE_CAPABILITIES, streams.EVENTS),
    "command": (RequestMigration, subjects.ALL_MIGRATION_REQUESTS, streams.COMMANDS),
}


def build(url: str, target: str):
    app = make_app(url, name="crasher", **SETTINGS)
    model, filter_subject, stream = TARGETS[target]

    @app.consumer(model, durable=DURABLE, filter_subject=filter_subject, stream=stream)
    async def on_message(message: NodeCapabilities | RequestMigration) -> None:
        print(f"got {message.kind}, crashing", flush=True)
        os._exit(17)

    return app


async def main(url: str, target: str) -> None:
    app = build(url, target)
    await app.start()
    print("ready", flush=True)
    await asyncio.sleep(30)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
