"""One driver per migration: the lease, and writes that only land while it is held.

A replica drives a migration only while it holds the lease (annotations on the Migration,
renewed every third of its length). Every write it makes — status patches and renewals
alike — carries the resourceVersion it last read, so a write after anyone else's is refused
(409). A refused write is retried on the fresh object only while the lease still names this
replica (someone edited the spec, say); otherwise the run stops. A replica that cannot renew
stops its run before the lease can expire, so another replica never takes over a migration
that is still being driven.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from services.coordinator.kube import Conflict, KubeGateway, lease_holder

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class LostMigration(Exception):
    """This replica no longer drives the migration; it must stop without touching it."""


class MigrationHandle:
    """The latest Migration object this replica knows, and the only way it writes it."""

    def __init__(self, migration: Obj, *, kube: KubeGateway, replica: str) -> None:
        self.obj = migration
        self.kube, self.replica = kube, replica
        meta = migration["metadata"]
        self.namespace, self.name = meta["namespace"], meta["name"]
        self._lock = asyncio.Lock()

    async def write(self, change: Callable[[Obj], Obj]) -> Obj:
        """`change(latest)` -> the object as written; retried on the fresh object after a
        conflict while this replica still holds the lease, else LostMigration."""
        async with self._lock:
            for _ in range(5):
                try:
                    self.obj = await asyncio.to_thread(change, self.obj)
                    return self.obj
                except Conflict:
                    fresh = await asyncio.to_thread(self.kube.get_migration, self.namespace, self.name)
                    if fresh is None:
                        raise LostMigration("the Migration was deleted") from None
                    holder = lease_holder(fresh, at=time.time())
                    if holder != self.replica:
                        raise LostMigration(
                            f"the lease is {'held by ' + holder if holder else 'expired'}: "
                            "another replica drives this migration now"
                        ) from None
                    self.obj = fresh
            raise LostMigration("every write conflicted: stopping rather than guessing")

    async def patch_status(self, status: Obj) -> Obj:
        return await self.write(lambda obj: self.kube.patch_status(obj, status))

    async def renew(self, seconds: float) -> Obj:
        return await self.write(lambda obj: self.kube.take_lease(obj, self.replica, seconds))

    async def release(self) -> Obj:
        return await self.write(self.kube.release_lease)


async def keep_lease(
    handle: MigrationHandle, run: asyncio.Task[Any], *, seconds: float, retry_every: float = 1.0
) -> None:
    """Renew every third of the lease while `run` goes on. A renewal that fails is retried;
    once the lease would expire before another try could succeed, `run` is cancelled (the
    status says where it was: whichever replica holds the lease next resumes from there)."""
    now = time.monotonic()
    expires = now + seconds
    # Stop this long before the lease expires: clocks differ, and the run needs to unwind.
    margin = seconds / 3
    next_try = now + seconds / 3
    while True:
        done, _ = await asyncio.wait({run}, timeout=max(0.0, next_try - time.monotonic()))
        if done:
            return
        left = expires - margin - time.monotonic()
        if left <= 0:
            log.error(
                "could not renew the lease: stopping the run before it expires",
                extra={"migration": handle.name},
            )
            run.cancel("could not renew the lease before it expires")
            return
        started = time.monotonic()
        try:
            # A hung API call must not carry the run past its lease.
            await asyncio.wait_for(handle.renew(seconds), timeout=left)
        except LostMigration as exc:
            log.warning("lost the migration's lease", extra={"migration": handle.name, "error": str(exc)})
            run.cancel(f"lost the lease: {exc}")
            return
        except Exception as exc:  # - the API away for a moment: try again while there is time
            log.warning("lease renewal failed", extra={"migration": handle.name, "error": str(exc)[:300]})
            next_try = min(time.monotonic() + retry_every, expires - margin)
            continue
        expires = started + seconds
        next_try = started + seconds / 3
