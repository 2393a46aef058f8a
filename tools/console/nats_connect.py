"""How the `clm` command connects to NATS: fail fast with the server's own words."""

from __future__ import annotations

import nats


async def _quiet(_: Exception) -> None:
    return None


async def connect(url: str) -> nats.NATS:
    # In nats-py 0 reconnect attempts means "forever": allow one retry, quietly, then fail.
    return await nats.connect(
        url,
        connect_timeout=3,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=_quiet,
    )
