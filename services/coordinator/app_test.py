"""The coordinator's pass over the Migrations: what one replica takes on (the runner itself is
covered by runner_test.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from services.coordinator.app import Coordinator, CoordinatorSettings, post_copy_threshold
from services.coordinator.kube import FINALIZER, LEASE_HOLDER, LEASE_UNTIL, finalizers_with


class FakeKube:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def list_migrations(self) -> list[dict[str, Any]]:
        return self.items

    def patch_status(self, migration: dict[str, Any], status: dict[str, Any]) -> None:
        migration["status"] = {**(migration.get("status") or {}), **status}

    def release_lease(self, migration: dict[str, Any]) -> dict[str, Any]:
        finalizers = finalizers_with(migration, ours=False)
        if finalizers is not None:
            migration["metadata"]["finalizers"] = finalizers
        return migration


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


async def test_an_ended_migration_whose_driver_died_lets_its_deletion_go() -> None:
    c = coordinator(replica_id="me")
    ended, held = migration(1, "Finished"), migration(2, "Failed")
    for m in (ended, held):
        m["metadata"]["finalizers"] = [FINALIZER]
    held["metadata"]["annotations"] = {LEASE_HOLDER: "other", LEASE_UNTIL: f"{time.time() + 60:.3f}"}
    c.kube = FakeKube([ended, held])  # type: ignore[assignment]  # a fake of the API gateway
    await c.resync()
    assert ended["metadata"]["finalizers"] == []
    assert held["metadata"]["finalizers"] == [FINALIZER], "its driver may still be letting it go"


async def test_progress_goes_to_the_run_it_is_about() -> None:
    from clm.contracts import StepProgress, encode

    c = coordinator()
    heard: list[StepProgress] = []
    c.runners["uid-1"] = SimpleNamespace(on_progress=_append_to(heard))  # type: ignore[assignment]  # a stand-in runner
    about = {
        "namespace": "ns",
        "migration": "m1",
        "agent": "checkpoint",
        "node": "a1",
        "step": "dump",
        "bytes_done": 1,
        "elapsed_seconds": 0.1,
    }
    await c.on_progress(encode(StepProgress(migration_uid="uid-1", **about)))
    await c.on_progress(encode(StepProgress(migration_uid="uid-2", **about)))  # not driven here
    await c.on_progress(b"not json")
    assert [h.migration_uid for h in heard] == ["uid-1"]


def _append_to(heard: list[Any]) -> Any:
    async def on_progress(message: Any) -> None:
        heard.append(message)

    return on_progress


def test_auto_picks_post_copy_only_where_the_cluster_opts_in() -> None:
    assert post_copy_threshold(CoordinatorSettings()) is None  # by default, never
    assert post_copy_threshold(CoordinatorSettings(post_copy_auto=True)) == 512 << 20  # the benchmark's
    assert (
        post_copy_threshold(CoordinatorSettings(post_copy_auto=True, post_copy_auto_min_mib=2048)) == 2 << 30
    )
