"""The checkpoint agent's listener for other agents' images: each connection is one
migration's directory, inside mutual TLS, accepted only if this node expects it
(transfer.py checks the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import Counter

from services.checkpoint_agent.tls import AgentTls
from services.checkpoint_agent.transfer import TransferError, receive_connection

log = logging.getLogger(__name__)


class ImageReceiver:
    def __init__(self, *, expected: Mapping[str, Path], tls: AgentTls | None, received: Counter) -> None:
        self.expected, self.tls, self.received = expected, tls, received
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # The connections being served (kept, so none is garbage-collected mid-transfer).
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); the port listened on."""
        listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        listener.settimeout(0)  # non-blocking, for the event loop
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept())
        return int(listener.getsockname()[1])

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self._listener)
            conn.settimeout(None)  # blocking: a worker thread serves it
            task = asyncio.create_task(self._serve(conn, peer))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, conn: socket.socket, peer: object) -> None:
        try:
            if self.tls is None:
                raise TransferError("this node has no agent TLS identity (CLM_AGENT_TLS_DIR): refused")
            migration, stats = await asyncio.to_thread(
                receive_connection, conn, tls=self.tls, destination_for=self.expected
            )
            self.received.inc(stats.bytes)
            log.info(
                "images received",
                extra={
                    "migration": migration,
                    "bytes": stats.bytes,
                    "mib_per_s": round(stats.mib_per_s, 1),
                    "peer": str(peer),
                },
            )
        except (TransferError, OSError, TimeoutError) as exc:
            log.warning("transfer refused or failed", extra={"peer": str(peer), "error": str(exc)})
        finally:
            with contextlib.suppress(OSError):
                conn.close()
