"""The coordinator's pass over the Migrations: what one replica takes on (the runner itself is
covered by runner_test.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from services.coordinator.app import Coordinator, CoordinatorSettings, post_copy_threshold
from services.coordinator.kube import LEASE_HOLDER, LEASE_UNTIL


class FakeKube:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def list_migrations(self) -> list[dict[str, Any]]:
        return self.items

    def patch_status(self, migration: dict[str, Any], status: dict[str, Any]) -> None:
        migration["status"] = {**(migration.get("status") or {}), **status}


def migration(i: int, phase: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"m{i}",
            "namespace": "ns",
            "uid": f"uid-{i}",
            "creationTimestamp": f"2026-01-01T00:00:{i:02d}Z",
        },
        "spec": {"podName": f"p{i}", "sourceNode": f"a{i}", "destinationNode": f"b{i}"},
        "status": {"phase": phase} if phase else {},
    }


def coordinator(**settings: Any) -> Coordinator:
    app = SimpleNamespace(metrics=SimpleNamespace(registry=CollectorRegistry()))
    return Coordinator(app, CoordinatorSettings(**settings))  # type: ignore[arg-type]  # only the metrics registry is used


async def test_a_replica_takes_on_at_most_its_share_of_a_burst() -> None:
    c = coordinator(max_per_replica=3, max_in_cluster=50)
    c.kube = FakeKube([migration(i) for i in range(10)])  # type: ignore[assignment]  # a fake of the API gateway
    started: list[str] = []
    release = asyncio.Event()

    async def drive(uid: str, _m: dict[str, Any]) -> None:
        started.append(uid)
        await release.wait()
        c.running.pop(uid, None)

    c.drive = drive  # type: ignore[method-assign,assignment]  # the fake stands in for the method
    await c.resync()
    await asyncio.sleep(0)
    assert started == ["uid-0", "uid-1", "uid-2"]  # oldest first, three at most
    await c.resync()  # a second pass while they run takes nothing more
    await asyncio.sleep(0)
    assert len(started) == 3
    release.set()
    await asyncio.sleep(0.01)
    c.kube.items = [m for m in c.kube.items if m["metadata"]["uid"] not in started]  # type: ignore[attr-defined]  # the fake's own list
    await c.resync()
    await asyncio.sleep(0)
    assert started[3:] == ["uid-3", "uid-4", "uid-5"]


async def test_finished_and_failed_migrations_are_left_alone() -> None:
    c = coordinator()
    c.kube = FakeKube([migration(1, "Finished"), migration(2, "Failed")])  # type: ignore[assignment]  # a fake of the API gateway
    await c.resync()
    assert c.running == {}


async def test_migrations_another_replica_holds_do_not_use_up_this_ones_slots() -> None:
    c = coordinator(max_per_replica=2, max_in_cluster=50, replica_id="me")
    items = [migration(i) for i in range(6)]
    until = f"{time.time() + 60:.3f}"
    for m in items[:3]:  # the oldest three: leased by another replica
        m["metadata"]["annotations"] = {LEASE_HOLDER: "other", LEASE_UNTIL: until}
    items[3]["metadata"]["annotations"] = {LEASE_HOLDER: "other", LEASE_UNTIL: "1.0"}  # expired
    c.kube = FakeKube(items)  # type: ignore[assignment]  # a fake of the API gateway
    started: list[str] = []

    async def drive(uid: str, _m: dict[str, Any]) -> None:
        started.append(uid)

    c.drive = drive  # type: ignore[method-assign,assignment]  # the fake stands in for the method
    await c.resync()
    await asyncio.sleep(0)
    assert started == ["uid-3", "uid-4"]  # the expired lease is free to take


def test_auto_picks_post_copy_only_where_the_cluster_opts_in() -> None:
    assert post_copy_threshold(CoordinatorSettings()) is None  # by default, never
    assert post_copy_threshold(CoordinatorSettings(post_copy_auto=True)) == 512 << 20  # the benchmark's
    assert (
        post_copy_threshold(CoordinatorSettings(post_copy_auto=True, post_copy_auto_min_mib=2048)) == 2 << 30
    )
