"""Which workload owns a pod, following the owner chain (ReplicaSet -> Deployment,
Job -> CronJob), and how many replicas it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clm.policy import objects as o

# (kind, namespace, name) -> the object as the API returns it, or None if unknown.
Lookup = Callable[[str, str, str], o.Obj | None]

SUPPORTED_KINDS = frozenset({"StatefulSet", "Deployment", "Pod", "Job", "CronJob"})


@dataclass(frozen=True, slots=True)
class Workload:
    # "Pod" for a bare pod; "Node" for a static (mirror) pod; otherwise the top owner's kind.
    kind: str
    name: str
    replicas: int
    # API group of the owner ("apps", "batch", "" for core, or a custom group).
    group: str = ""

    @property
    def qualified_kind(self) -> str:
        return f"{self.group}/{self.kind}" if self.group else self.kind


def _group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def _replicas(obj: o.Obj | None, field: str = "replicas") -> int:
    if obj is None:
        return 1
    value = o.spec(obj).get(field)
    return 1 if value is None else int(value)


def resolve(pod: o.Obj, lookup: Lookup) -> Workload:
    ns = o.namespace(pod)
    ref = o.controller_ref(pod)
    if ref is None:
        return Workload("Pod", o.name(pod), replicas=1)
    kind, name, group = ref.get("kind", ""), ref.get("name", ""), _group(ref.get("apiVersion", ""))
    if kind == "ReplicaSet":
        rs = lookup("ReplicaSet", ns, name)
        parent = o.controller_ref(rs) if rs else None
        if parent and parent.get("kind") == "Deployment":
            deployment = lookup("Deployment", ns, parent["name"])
            replicas = _replicas(deployment) if deployment else _replicas(rs)
            return Workload("Deployment", parent["name"], replicas, "apps")
        if parent:  # a ReplicaSet run by some other controller (e.g. Argo Rollouts)
            owner = lookup(parent.get("kind", ""), ns, parent["name"])
            return Workload(
                parent.get("kind", ""),
                parent["name"],
                _replicas(owner or rs),
                _group(parent.get("apiVersion", "")),
            )
        return Workload("ReplicaSet", name, _replicas(rs), "apps")
    if kind == "Job":
        job = lookup("Job", ns, name)
        parent = o.controller_ref(job) if job else None
        parallelism = _replicas(job, "parallelism")
        if parent and parent.get("kind") == "CronJob":
            return Workload("CronJob", parent["name"], parallelism, "batch")
        if parent:
            return Workload(
                parent.get("kind", ""), parent["name"], parallelism, _group(parent.get("apiVersion", ""))
            )
        return Workload("Job", name, parallelism, "batch")
    if kind in ("StatefulSet", "Deployment"):
        return Workload(kind, name, _replicas(lookup(kind, ns, name)), "apps")
    if kind in ("DaemonSet", "Node"):
        return Workload(kind, name, replicas=1, group=group)
    return Workload(kind, name, _replicas(lookup(kind, ns, name)), group)
