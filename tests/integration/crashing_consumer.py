"""A consumer process that dies (os._exit) on every message: a handler that never finishes.

Run as `python -m tests.integration.crashing_consumer NATS_URL`; used by test_dead_letters.
"""

from __future__ import annotations

import asyncio
import os
import sys

from clm.contracts import NodeCapabilities, streams, subjects
from tests.integration.support import make_app

DURABLE = "crash-test"
SETTINGS = {"max_deliver": 2, "ack_wait_seconds": 1.0}


def build(url: str):
    app = make_app(url, name="crasher", **SETTINGS)

    @app.consumer(NodeCapabilities, durable=DURABLE, filter_subject=subjects.ALL_NODE_CAPABILITIES,
                  stream=streams.EVENTS)
    async def on_caps(caps: NodeCapabilities) -> None:
        print(f"got {caps.node}, crashing", flush=True)
        os._exit(17)

    return app


async def main(url: str) -> None:
    app = build(url)
    await app.start()
    print("ready", flush=True)
    await asyncio.sleep(30)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
