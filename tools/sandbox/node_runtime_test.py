from __future__ import annotations

import pytest

from clm.policy import names
from tests.kit import builders as b
from tools.sandbox.node_runtime import REMOVE_AFTER_SECONDS, container_args, decide


def _pod(name: str, **kw) -> dict:
    return b.pod(name, node="n1", phase=kw.pop("phase", "Pending"), **kw)


def _migration(pod: str, phase: str | None, **status) -> dict:
    return {
        "metadata": {"name": f"{pod}-move", "namespace": "default"},
        "spec": {"podName": pod},
        "status": {"phase": phase, **status} if phase else {},
    }


def test_new_pods_start_once_clones_are_left_to_the_checkpoint_agent() -> None:
    web = _pod("web")
    clone = _pod("db-clone-1", annotations={names.RESTORE: "default/db", names.RUNTIME_POD_UID: "uid-pod-db"})
    actions = decide("n1", [web, clone], [], running=set(), started=set(), gone_since={}, now=0.0)
    assert [p["metadata"]["name"] for p in actions.start] == ["web"]
    # Started before (and dumped since): never started twice by the runtime.
    again = decide("n1", [web], [], running=set(), started={"uid-pod-web"}, gone_since={}, now=1.0)
    assert again.start == ()


def test_a_pod_held_by_an_unfinished_migration_is_not_started() -> None:
    web = _pod("web")
    held = decide("n1", [web], [_migration("web", "Restoring")], set(), set(), {}, 0.0)
    assert held.start == ()
    done = decide("n1", [web], [_migration("web", "Failed")], set(), set(), {}, 0.0)
    assert [p["metadata"]["name"] for p in done.start] == ["web"]


def test_containers_of_a_pod_gone_from_the_node_are_removed_after_a_grace() -> None:
    gone: dict[str, float] = {}
    first = decide("n1", [], [], running={"uid-old"}, started=set(), gone_since=gone, now=10.0)
    assert first.remove == () and gone == {"uid-old": 10.0}
    later = decide("n1", [], [], {"uid-old"}, set(), gone, 10.0 + REMOVE_AFTER_SECONDS)
    assert later.remove == ("uid-old",)


def test_a_pod_arriving_by_migration_keeps_its_restored_containers() -> None:
    arriving = _migration("db", "Finalizing", destinationNode="n1", sourcePodUID="uid-db")
    gone: dict[str, float] = {}
    for now in (0.0, 100.0):
        actions = decide("n1", [], [arriving], running={"uid-db"}, started=set(), gone_since=gone, now=now)
        assert actions.remove == ()
    # Its clone (another UID, the first pod's runtime UID) keeps them too.
    clone = _pod("db-clone-1", annotations={names.RESTORE: "default/db", names.RUNTIME_POD_UID: "uid-db"})
    assert decide("n1", [clone], [], {"uid-db"}, set(), gone, 200.0).remove == ()
    assert gone == {}


def test_a_container_needs_a_command() -> None:
    assert container_args({"name": "c", "command": ["sleep"], "args": ["9"]}) == ["sleep", "9"]
    with pytest.raises(ValueError, match="has no command: the sandbox runs the host's programs"):
        container_args({"name": "c", "image": "nginx"})
