"""Clone pod names and the clone's spec (seed 003, "Pod naming" and "Annotations").

Deployments and other workloads: `<original>-clone-<N>`, N counting up across moves
(`x-clone-1` becomes `x-clone-2`). StatefulSet pods keep their name (their identity and
PVCs must stay stable), so the source pod must be gone before the clone is created.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from clm.policy import names
from clm.policy import objects as o
from clm.policy.reasons import Reason

MAX_NAME = 253  # pod names are DNS subdomains
_CLONE = re.compile(r"^(?P<base>.+)-clone-(?P<n>[1-9][0-9]*)$")


def split_clone(name: str) -> tuple[str, int]:
    """('web-abc', 0) for an original, ('web-abc', 2) for 'web-abc-clone-2'."""
    match = _CLONE.match(name)
    return (match["base"], int(match["n"])) if match else (name, 0)


def clone_name(name: str, owner_kind: str, taken: Container[str] = ()) -> str:
    """The clone's name; skips names in `taken` (pods that already exist)."""
    if owner_kind == "StatefulSet":
        return name
    base, n = split_clone(name)
    while True:
        n += 1
        suffix = f"-clone-{n}"
        candidate = base[: MAX_NAME - len(suffix)].rstrip("-.") + suffix
        if candidate not in taken:
            return candidate


def _listed(pod: o.Obj, annotation: str) -> list[str]:
    raw = o.annotations(pod).get(annotation, "")
    return [n.strip() for n in raw.split(",") if n.strip()]


@dataclass(frozen=True, slots=True)
class CloneSpec:
    pod: dict[str, Any]
    # Problems with the restore annotations (names of containers that do not exist).
    problems: tuple[Reason, ...]


# Server-set or node-specific fields that must not be copied to the clone.
_DROP_META = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "generation",
    "selfLink",
    "generateName",
)


def runtime_pod_uid(pod: o.Obj) -> str:
    """The UID the pod's containers and network carry on its node: its own, or for a clone
    the one its first ancestor had."""
    return o.annotations(pod).get(names.RUNTIME_POD_UID) or o.meta(pod).get("uid", "")


def clone_spec(pod: o.Obj, *, name: str, node: str) -> CloneSpec:
    """The clone pod to create on `node`: same spec bound to the destination, annotated
    cast.ai/restore, owner references kept; init containers, startup probes and PostStart
    hooks left out unless the restore-run annotations ask for them."""
    runtime_uid = runtime_pod_uid(pod)
    clone: dict[str, Any] = copy.deepcopy(dict(pod))
    clone.pop("status", None)
    meta = clone.setdefault("metadata", {})
    for key in _DROP_META:
        meta.pop(key, None)
    meta["name"] = name
    annotations = meta.setdefault("annotations", {})
    annotations[names.RESTORE] = f"{o.namespace(pod)}/{o.name(pod)}"
    if runtime_uid:
        annotations[names.RUNTIME_POD_UID] = runtime_uid
    if o.status(pod).get("podIP"):
        annotations[names.RESTORE_POD_IP] = o.status(pod)["podIP"]
    spec = clone.setdefault("spec", {})
    spec["nodeName"] = node
    spec.pop("schedulerName", None)  # bound directly: no scheduler involved

    problems: list[Reason] = []
    runtime_class = spec.get("runtimeClassName")
    if runtime_class and runtime_class != names.RESTORE_RUNTIME_CLASS:
        problems.append(
            Reason(
                "restore-runtime-class",
                f"the pod runs with RuntimeClass {runtime_class!r}; a clone runs with "
                f"{names.RESTORE_RUNTIME_CLASS!r}, whose handler restores with runc and CRIU",
            )
        )
    # kubelet hands the clone's containers to CLM's handler, which restores them.
    spec["runtimeClassName"] = names.RESTORE_RUNTIME_CLASS
    container_names = {c.get("name") for c in spec.get("containers") or []}
    init_names = {c.get("name") for c in spec.get("initContainers") or []}

    def check(annotation: str, wanted: list[str], existing: set[Any], what: str) -> set[str]:
        for missing in sorted(set(wanted) - existing):
            problems.append(
                Reason(
                    "restore-annotation-unknown-container",
                    f"{annotation} names {missing!r}, which is not a {what} of the pod",
                )
            )
        return set(wanted) & existing

    run_init = check(
        names.RESTORE_RUN_INIT_CONTAINERS,
        _listed(pod, names.RESTORE_RUN_INIT_CONTAINERS),
        init_names,
        "init container",
    )
    run_probe = check(
        names.RESTORE_RUN_STARTUP_PROBE,
        _listed(pod, names.RESTORE_RUN_STARTUP_PROBE),
        container_names,
        "container",
    )
    run_post = check(
        names.RESTORE_RUN_POST_START_EXEC,
        _listed(pod, names.RESTORE_RUN_POST_START_EXEC),
        container_names,
        "container",
    )

    if "initContainers" in spec:
        # Sidecars (restartPolicy: Always) are running containers: they are restored too.
        kept = [
            c
            for c in spec["initContainers"]
            if c.get("name") in run_init or c.get("restartPolicy") == "Always"
        ]
        if kept:
            spec["initContainers"] = kept
        else:
            del spec["initContainers"]
    for c in spec.get("containers") or []:
        if c.get("name") not in run_probe:
            c.pop("startupProbe", None)
        lifecycle = c.get("lifecycle")
        if lifecycle and "postStart" in lifecycle:
            keep = c.get("name") in run_post and "exec" in lifecycle["postStart"]
            if not keep:
                del lifecycle["postStart"]
                if not lifecycle:
                    del c["lifecycle"]
    return CloneSpec(pod=clone, problems=tuple(problems))
