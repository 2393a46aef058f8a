"""The agents' channel alone: a file of N MiB sent from one node's network namespace to
another's with the agents' own transfer code, in mutual TLS. The migrate benchmark runs
it beside the post-copy rows: the fill's goal is stated against what this channel moves.

    python -m tools.benchmarks.channel_probe receive TLS_DIR HOST PORT DIR
        prints "ready PORT" (PORT 0: a free one), then "received BYTES SECONDS" after one
        transfer
    python -m tools.benchmarks.channel_probe send TLS_DIR HOST PORT DIR
        sends DIR's files, prints "sent BYTES SECONDS"
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

from services.checkpoint_agent.tls import AgentTls
from services.checkpoint_agent.transfer import open_channel, receive_connection

PROBE = "channel-probe"


def receive(tls_dir: Path, host: str, port: int, target: Path) -> None:
    listener = socket.create_server((host, port))
    print(f"ready {listener.getsockname()[1]}", flush=True)
    conn, _ = listener.accept()
    _, stats = receive_connection(conn, tls=AgentTls(tls_dir), destination_for={PROBE: target})
    print(f"received {stats.bytes} {stats.seconds:.6f}", flush=True)


async def send(tls_dir: Path, host: str, port: int, source: Path) -> None:
    started = time.perf_counter()
    channel = await open_channel(host, port, migration=PROBE, tls=AgentTls(tls_dir), connect_seconds=10)
    try:
        stats = await channel.send(source, stall_seconds=60)
    finally:
        channel.close()
    print(f"sent {stats.bytes} {time.perf_counter() - started:.6f}", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) != 5 or argv[0] not in ("receive", "send"):
        raise SystemExit(__doc__)
    command, tls_dir, host, port, directory = argv
    if command == "receive":
        receive(Path(tls_dir), host, int(port), Path(directory))
    else:
        asyncio.run(send(Path(tls_dir), host, int(port), Path(directory)))


if __name__ == "__main__":
    main(sys.argv[1:])
