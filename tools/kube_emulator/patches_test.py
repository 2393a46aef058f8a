from typing import Any

import pytest

from tools.kube_emulator.patches import PatchError, json_patch, merge_patch, strategic_merge


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3]}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3]}
    assert target["c"] == {"d": "e", "f": "g"}  # not modified


def test_json_patch_operations() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "spec": {"items": [1, 2, 3]}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "replace", "path": "/spec/items/0", "value": 9},
            {"op": "add", "path": "/spec/items/-", "value": 4},
            {"op": "move", "from": "/spec/items/1", "path": "/spec/moved"},
            {"op": "copy", "from": "/metadata/labels", "path": "/spec/labels"},
            {"op": "test", "path": "/spec/moved", "value": 2},
            {"op": "add", "path": "/metadata/annotations", "value": {"x~y/z": "1"}},
            {"op": "remove", "path": "/metadata/annotations/x~0y~1z"},
        ],
    )
    assert out == {
        "metadata": {"labels": {"b": "2"}, "annotations": {}},
        "spec": {"items": [9, 3, 4], "moved": 2, "labels": {"b": "2"}},
    }


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/nope"}],
        [{"op": "replace", "path": "/a/b", "value": 1}],
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "frobnicate", "path": "/a"}],
        {"op": "add"},
    ],
)
def test_json_patch_errors(ops) -> None:
    with pytest.raises(PatchError):
        json_patch({"a": 1}, ops)


def test_strategic_merge_by_keys_and_directives() -> None:
    pod = {
        "metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
        "spec": {
            "containers": [{"name": "app", "image": "v1"}, {"name": "side", "image": "s"}],
            "tolerations": [{"key": "k", "effect": "NoSchedule"}],
        },
    }
    patch = {
        "metadata": {"labels": {"b": "2", "a": None}, "finalizers": ["y"]},
        "spec": {
            "containers": [
                {"name": "app", "image": "v2"},
                {"name": "side", "$patch": "delete"},
                {"name": "new", "image": "n"},
            ]
        },
    }
    out: dict[str, Any] = strategic_merge(pod, patch)
    assert out["metadata"] == {"labels": {"b": "2"}, "finalizers": ["x", "y"]}
    assert out["spec"]["containers"] == [{"name": "app", "image": "v2"}, {"name": "new", "image": "n"}]
    assert out["spec"]["tolerations"] == pod["spec"]["tolerations"]  # type: ignore[index]  # a literal dict of mixed values


def test_strategic_merge_conditions_by_type_and_replace_directive() -> None:
    status = {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Done", "status": "False"}]}
    out = strategic_merge(status, {"conditions": [{"type": "Ready", "status": "True"}]})
    assert out["conditions"] == [{"type": "Ready", "status": "True"}, {"type": "Done", "status": "False"}]
    replaced = strategic_merge(status, {"conditions": [{"$patch": "replace"}, {"type": "X", "status": "T"}]})
    assert replaced["conditions"] == [{"type": "X", "status": "T"}]
    dropped = strategic_merge(
        {"metadata": {"finalizers": ["a", "b"]}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert dropped == {"metadata": {"finalizers": ["b"]}}
