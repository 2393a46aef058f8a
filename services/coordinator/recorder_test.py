"""The Migration's conditions: a transition time moves only when a condition's status flips."""

from __future__ import annotations

from typing import Any

import pytest

from clm.contracts.protocol import Phase
from services.coordinator import recorder
from services.coordinator.recorder import StatusRecorder


class FakeHandle:
    """What StatusRecorder needs of a MigrationHandle: the object, and status writes."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] = {
            "metadata": {"namespace": "games", "name": "m1", "uid": "u1", "generation": 1},
            "spec": {"podName": "game-0"},
        }
        self.kube = None
        self.replica = "r1"
        self.written: list[dict[str, Any]] = []

    async def patch_status(self, status: dict[str, Any]) -> None:
        self.written.append(dict(status))
        self.obj = {**self.obj, "status": status}


def conditions(handle: FakeHandle) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in handle.written[-1]["conditions"]}


async def test_transition_time_moves_only_when_the_status_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(f"2026-12-01T10:00:0{n}Z" for n in range(10))
    monkeypatch.setattr(recorder, "now_iso", lambda: next(clock))
    handle = FakeHandle()
    status = StatusRecorder(handle, publish=None)  # type: ignore[arg-type]  # a fake handle; no events here

    await status.phase(Phase.PREPARING, "preparing")
    first = conditions(handle)["Progressing"]["lastTransitionTime"]
    await status.phase(Phase.DUMPING, "dumping")
    await status.phase(Phase.RESTORING, "restoring")
    progressing = conditions(handle)["Progressing"]
    assert progressing["status"] == "True" and progressing["reason"] == "Restoring"
    assert progressing["lastTransitionTime"] == first, "a phase change is not a transition"

    await status.phase(Phase.FINISHED, "done")
    done = conditions(handle)
    assert done["Progressing"]["status"] == "False", "a finished migration is no longer progressing"
    assert done["Progressing"]["lastTransitionTime"] != first
    assert done["Succeeded"]["status"] == "True"
    assert set(done) == {"Progressing", "Succeeded"}


async def test_past_the_commit_point_the_migration_says_so() -> None:
    handle = FakeHandle()
    status = StatusRecorder(handle, publish=None)  # type: ignore[arg-type]  # a fake handle; no events here
    await status.phase(Phase.RESTORING, "restoring")
    assert "Committed" not in conditions(handle)
    await status.patch(committed=True)
    await status.phase(Phase.FINALIZING, "the pod runs on the destination")
    committed = conditions(handle)["Committed"]
    assert committed["status"] == "True" and committed["reason"] == "Finalizing"
