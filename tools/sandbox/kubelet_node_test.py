from __future__ import annotations

import pytest

from clm.policy import names
from tests.kit import builders as b
from tests.kit.containerd_images import POD_IMAGE
from tools.sandbox.kubelet_node import decide, image_problem, volume_files


def _pod(name: str, **kw) -> dict:
    return b.pod(name, node="n1", phase=kw.pop("phase", "Pending"), **kw)


def test_every_new_pod_starts_clones_too_as_kubelet_starts_them() -> None:
    web = _pod("web")
    clone = _pod("db-clone-1", annotations={names.RESTORE: "default/db"})
    actions = decide([web, clone], present=set(), busy=set(), retry_at={}, now=0.0)
    assert [p["metadata"]["name"] for p in actions.start] == ["web", "db-clone-1"]
    # Running already, or being started: not again.
    uid = web["metadata"]["uid"]
    assert decide([web], present={uid}, busy=set(), retry_at={}, now=1.0).start == ()
    assert decide([web], present=set(), busy={uid}, retry_at={}, now=1.0).start == ()


def test_a_pod_whose_start_failed_is_tried_again_after_its_back_off() -> None:
    web = _pod("web")
    uid = web["metadata"]["uid"]
    assert decide([web], set(), set(), {uid: 5.0}, now=4.9).start == ()
    assert [p["metadata"]["name"] for p in decide([web], set(), set(), {uid: 5.0}, now=5.0).start] == ["web"]


def test_finished_or_deleting_pods_do_not_start() -> None:
    done = _pod("job", phase="Succeeded")
    going = _pod("old")
    going["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    assert decide([done, going], set(), set(), {}, 0.0).start == ()


def test_a_sandbox_whose_pod_object_is_gone_is_removed_at_once() -> None:
    # A StatefulSet's namesake has another UID: the old pod's sandbox goes, the new one starts.
    namesake = _pod("game-0")
    namesake["metadata"]["uid"] = "uid-new"
    actions = decide([namesake], present={"uid-old"}, busy=set(), retry_at={}, now=0.0)
    assert actions.remove == ("uid-old",)
    assert [p["metadata"]["uid"] for p in actions.start] == ["uid-new"]
    assert decide([], present={"uid-old"}, busy={"uid-old"}, retry_at={}, now=0.0).remove == ()


def test_only_images_the_node_has_run() -> None:
    assert image_problem(POD_IMAGE, {POD_IMAGE}) is None
    problem = image_problem("nginx", {POD_IMAGE})
    assert problem is not None and "reaches no registry" in problem and POD_IMAGE in problem


def test_config_map_and_secret_volumes_hold_their_keys() -> None:
    cm = {"data": {"game.toml": "level = 3\n"}, "binaryData": {"logo": "AAE="}}
    volume = {"name": "cfg", "configMap": {"name": "game"}}
    assert volume_files(volume, cm) == {"game.toml": b"level = 3\n", "logo": b"\x00\x01"}
    picked = {
        "name": "cfg",
        "configMap": {"name": "game", "items": [{"key": "game.toml", "path": "etc/g.toml"}]},
    }
    assert volume_files(picked, cm) == {"etc/g.toml": b"level = 3\n"}
    secret = {"name": "s", "secret": {"secretName": "token"}}
    assert volume_files(secret, {"data": {"token": "c2VjcmV0"}}) == {"token": b"secret"}


def test_a_missing_config_map_is_an_error_unless_optional() -> None:
    with pytest.raises(ValueError, match="configMap 'game' not found"):
        volume_files({"name": "cfg", "configMap": {"name": "game"}}, None)
    assert volume_files({"name": "cfg", "configMap": {"name": "game", "optional": True}}, None) == {}


def test_a_sandbox_left_by_a_failed_start_goes_then_its_pod_starts_anew() -> None:
    web = _pod("web")
    uid = web["metadata"]["uid"]
    # The sandbox is there, but this kubelet does not run the pod (its teardown failed).
    left = decide([web], present={uid}, busy=set(), retry_at={}, now=0.0, running=set())
    assert left.remove == (uid,) and left.start == ()
    assert [p["metadata"]["name"] for p in decide([web], set(), set(), {}, 0.0, running=set()).start] == [
        "web"
    ]
    assert decide([web], present={uid}, busy=set(), retry_at={}, now=0.0, running={uid}).remove == ()
