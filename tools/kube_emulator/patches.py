"""The three patch types of the Kubernetes API.

- application/merge-patch+json: RFC 7386.
- application/json-patch+json: RFC 6902 (add, remove, replace, move, copy, test).
- application/strategic-merge-patch+json: maps merge; lists with a merge key (containers by
  name, conditions by type, ownerReferences by uid, ...) merge by that key; `$patch:
  delete|replace` and `$deleteFromPrimitiveList/<field>` directives; other lists replace.
  This covers the fields Kubernetes' own types declare; custom resources accept no
  strategic merge patch (415), as on a real server.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch


class PatchError(ValueError):
    """The patch cannot be applied (422 from the server)."""


# field name -> merge key, for lists Kubernetes merges by key (patchMergeKey).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "taints": "key",
    "hostAliases": "ip",
    "addresses": "type",
    "volumeDevices": "devicePath",
    "readinessGates": "conditionType",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}
# Primitive lists Kubernetes merges as sets.
MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902, by the jsonpatch library; any failure is the server's 422."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    try:
        return jsonpatch.apply_patch(target, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise PatchError(f"the JSON patch cannot be applied: {exc}") from None


def _merge_keyed_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [strategic_merge(None, i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    result = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            result.append(copy.deepcopy(item))
            continue
        position = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, dict) and existing.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
            continue
        if position is None:
            result.append(strategic_merge(None, item))
        else:
            result[position] = strategic_merge(result[position], item)
    return result


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, list):
        if isinstance(target, list) and field in MERGE_KEYS:
            return _merge_keyed_list(target, patch, MERGE_KEYS[field])
        if isinstance(target, list) and field in MERGED_PRIMITIVE_LISTS:
            return target + [v for v in patch if v not in target]
        return copy.deepcopy(patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$patch" or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
            continue
        if key.startswith("$retainKeys"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = strategic_merge(result.get(key), value, key)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    return result
