"""The checkpoint agent's listener for other agents' images: each connection is one
migration's directory, accepted only if this node expects it (transfer.py checks the rest)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import Counter

from services.checkpoint_agent.transfer import TransferError, receive_directory

log = logging.getLogger(__name__)


class ImageReceiver:
    def __init__(self, *, expected: Mapping[str, Path], secret: bytes | None, received: Counter) -> None:
        self.expected, self.secret, self.received = expected, secret, received
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); the port listened on."""
        self._server = await asyncio.start_server(self._receive, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if not self.secret:
                raise TransferError("no transfer secret configured on this node")
            migration, stats = await receive_directory(
                reader, writer, destination_for=self.expected, secret=self.secret
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
        except (TransferError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.warning("transfer refused or failed", extra={"peer": str(peer), "error": str(exc)})
        finally:
            writer.close()
