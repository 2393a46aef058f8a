"""One driver per migration: renewals that fail or conflict stop the run before the lease can
expire, and status writes land only while the lease is this replica's."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any

import pytest

from services.coordinator.kube import LEASE_HOLDER, LEASE_UNTIL, Conflict
from services.coordinator.lease import LostMigration, MigrationHandle, keep_lease

LEASE = 0.9


def migration(holder: str = "me", *, rv: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": str(rv),
            "annotations": {LEASE_HOLDER: holder, LEASE_UNTIL: f"{time.time() + 60:.3f}"},
        },
        "status": {},
    }


class FakeKube:
    """The Migration's API with optimistic concurrency, and faults on demand."""

    def __init__(self) -> None:
        self.stored = migration()
        self.renewals = 0
        self.fail_renewals = 0  # this many renewals raise (the API away)
        self.hang = threading.Event()  # set: a renewal blocks (a hung call)
        self.writes: list[str] = []

    def _check(self, obj: dict[str, Any]) -> None:
        if obj["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            raise Conflict("changed by someone else")

    def _bump(self) -> dict[str, Any]:
        meta = self.stored["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.stored)

    def take_lease(self, obj: dict[str, Any], holder: str, seconds: float) -> dict[str, Any]:
        self.renewals += 1
        if self.hang.is_set():
            time.sleep(2)
        if self.fail_renewals > 0:
            self.fail_renewals -= 1
            raise RuntimeError("503 Service Unavailable")
        self._check(obj)
        self.stored["metadata"]["annotations"] = {
            LEASE_HOLDER: holder,
            LEASE_UNTIL: f"{time.time() + seconds}",
        }
        return self._bump()

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self._check(obj)
        self.stored["status"] = copy.deepcopy(status)
        self.writes.append(status.get("phase", ""))
        return self._bump()

    def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.stored)

    def someone_else_writes(self, *, holder: str | None = None) -> None:
        if holder is not None:
            self.stored["metadata"]["annotations"] = {
                LEASE_HOLDER: holder,
                LEASE_UNTIL: f"{time.time() + 60}",
            }
        self._bump()


def handle(kube: FakeKube) -> MigrationHandle:
    return MigrationHandle(copy.deepcopy(kube.stored), kube=kube, replica="me")  # type: ignore[arg-type]  # a fake API


async def run_with_lease(
    kube: FakeKube, h: MigrationHandle, seconds: float
) -> tuple[asyncio.Task[None], float]:
    started = time.monotonic()
    run = asyncio.create_task(asyncio.sleep(seconds))
    keeper = asyncio.create_task(keep_lease(h, run, seconds=LEASE, retry_every=0.05))
    with pytest.raises(asyncio.CancelledError):
        await run
    await keeper
    return run, time.monotonic() - started


async def test_renewals_keep_a_healthy_run_going() -> None:
    kube = FakeKube()
    h = handle(kube)
    run = asyncio.create_task(asyncio.sleep(2 * LEASE))
    keeper = asyncio.create_task(keep_lease(h, run, seconds=LEASE, retry_every=0.05))
    await run  # not cancelled: it outlived its first lease by renewing it
    await keeper
    assert kube.renewals >= 4


async def test_a_failed_renewal_is_retried() -> None:
    kube = FakeKube()
    kube.fail_renewals = 2
    h = handle(kube)
    run = asyncio.create_task(asyncio.sleep(1.5 * LEASE))
    keeper = asyncio.create_task(keep_lease(h, run, seconds=LEASE, retry_every=0.05))
    await run
    await keeper
    assert kube.fail_renewals == 0


async def test_a_run_that_cannot_renew_stops_before_its_lease_expires() -> None:
    kube = FakeKube()
    kube.fail_renewals = 10**6
    run, elapsed = await run_with_lease(kube, handle(kube), 10)
    assert run.cancelled() and elapsed < LEASE, elapsed


async def test_a_hung_renewal_does_not_carry_the_run_past_its_lease() -> None:
    kube = FakeKube()
    kube.hang.set()
    run, elapsed = await run_with_lease(kube, handle(kube), 10)
    assert run.cancelled() and elapsed < LEASE, elapsed


async def test_a_lease_taken_by_another_replica_stops_the_run_at_once() -> None:
    kube = FakeKube()
    h = handle(kube)
    kube.someone_else_writes(holder="other")
    run, elapsed = await run_with_lease(kube, h, 10)
    assert run.cancelled() and elapsed < LEASE / 2 + 0.2, elapsed


async def test_a_status_write_after_someone_elses_lands_only_while_the_lease_is_ours() -> None:
    kube = FakeKube()
    h = handle(kube)
    kube.someone_else_writes()  # a user edited the spec: the lease is still ours
    await h.patch_status({"phase": "Preparing"})
    assert kube.writes == ["Preparing"]
    kube.someone_else_writes(holder="other")  # another replica took over
    with pytest.raises(LostMigration, match="held by other"):
        await h.patch_status({"phase": "Dumping"})
    assert kube.writes == ["Preparing"]  # nothing written over the other driver
