"""Accessors over Kubernetes objects as the API returns them (plain dicts)."""

from collections.abc import Iterator, Mapping
from typing import Any

from clm.policy.quantity import to_int

Obj = Mapping[str, Any]
EMPTY: Mapping[str, Any] = {}


def meta(obj: Obj) -> Obj:
    return obj.get("metadata") or EMPTY


def name(obj: Obj) -> str:
    return meta(obj).get("name", "")


def uid(obj: Obj) -> str:
    return str(meta(obj).get("uid", ""))


def namespace(obj: Obj) -> str:
    return meta(obj).get("namespace", "")


def labels(obj: Obj) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def annotations(obj: Obj) -> dict[str, str]:
    return meta(obj).get("annotations") or {}


def spec(obj: Obj) -> Obj:
    return obj.get("spec") or EMPTY


def status(obj: Obj) -> Obj:
    return obj.get("status") or EMPTY


def controller_ref(obj: Obj) -> Obj | None:
    """The owner reference with controller: true (or the only owner), if any."""
    refs = meta(obj).get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref
    return refs[0] if len(refs) == 1 else None


def containers(pod: Obj) -> list[Obj]:
    return list(spec(pod).get("containers") or [])


def init_containers(pod: Obj) -> list[Obj]:
    return list(spec(pod).get("initContainers") or [])


def running_containers(pod: Obj) -> Iterator[Obj]:
    """Containers that run alongside the app: regular, ephemeral and sidecar init
    containers (restartPolicy: Always). Plain init containers have already exited."""
    yield from containers(pod)
    yield from spec(pod).get("ephemeralContainers") or []
    for c in init_containers(pod):
        if c.get("restartPolicy") == "Always":
            yield c


def container_resources(c: Obj) -> dict[str, int]:
    """Requests, falling back to limits (Kubernetes defaults requests to limits)."""
    res = c.get("resources") or EMPTY
    requests = res.get("requests") or EMPTY
    limits = res.get("limits") or EMPTY
    out = {k: to_int(k, v) for k, v in limits.items()}
    out.update({k: to_int(k, v) for k, v in requests.items()})
    return out


def pod_requests(pod: Obj) -> dict[str, int]:
    """Effective pod requests as the scheduler computes them: the larger of the sum of
    app containers (plus sidecars) and each init container, plus overhead."""
    total: dict[str, int] = {}
    sidecars: dict[str, int] = {}
    for c in containers(pod):
        for k, v in container_resources(c).items():
            total[k] = total.get(k, 0) + v
    init_peak: dict[str, int] = {}
    for c in init_containers(pod):
        res = container_resources(c)
        if c.get("restartPolicy") == "Always":
            for k, v in res.items():
                sidecars[k] = sidecars.get(k, 0) + v
            continue
        for k, v in res.items():
            init_peak[k] = max(init_peak.get(k, 0), v + sidecars.get(k, 0))
    for k, v in sidecars.items():
        total[k] = total.get(k, 0) + v
    for k, v in init_peak.items():
        total[k] = max(total.get(k, 0), v)
    for k, v in (spec(pod).get("overhead") or EMPTY).items():
        total[k] = total.get(k, 0) + to_int(k, v)
    return total


def node_allocatable(node: Obj) -> dict[str, int]:
    alloc = status(node).get("allocatable") or EMPTY
    return {k: to_int(k, v) for k, v in alloc.items()}
