"""PodDisruptionBudgets as the disruption controller keeps them, and the Eviction API."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tools.kube_emulator.errors import ApiError
from tools.kube_emulator.resources import ResourceType
from tools.kube_emulator.selectors import label_selector

if TYPE_CHECKING:
    from tools.kube_emulator.store import Store

Obj = dict[str, Any]


def pdb_status(store: Store, pdb: Obj) -> Obj:
    pods_rt = store.registry.get("", "v1", "pods")
    assert pods_rt is not None
    selector = (pdb.get("spec") or {}).get("selector") or {}
    match = selector_predicate(selector)
    ns = pdb["metadata"]["namespace"]
    pods = [
        e.obj
        for (pns, _), e in store.bucket(pods_rt).items()
        if pns == ns and match((e.obj.get("metadata") or {}).get("labels") or {})
    ]
    healthy = sum(
        1
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    )
    expected = len(pods)
    spec = pdb.get("spec") or {}

    def amount(value: Any) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return -(-int(value[:-1]) * expected // 100)  # rounds up, as Kubernetes does
        return int(value)

    if "minAvailable" in spec:
        desired = amount(spec["minAvailable"])
    elif "maxUnavailable" in spec:
        desired = max(0, expected - amount(spec["maxUnavailable"]))
    else:
        desired = 0
    return {
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": max(0, healthy - desired),
        "observedGeneration": pdb["metadata"].get("generation", 1),
    }


def refresh_pdbs(store: Store, namespace: str) -> None:
    rt = store.registry.get("policy", "v1", "poddisruptionbudgets")
    assert rt is not None
    for (ns, _), entry in list(store.bucket(rt).items()):
        if ns != namespace:
            continue
        status = {**(entry.obj.get("status") or {}), **pdb_status(store, entry.obj)}
        if status != entry.obj.get("status"):
            obj = {**entry.obj, "status": status, "metadata": dict(entry.obj["metadata"])}
            store.commit(rt, "MODIFIED", obj, entry.obj)


def evict(store: Store, pods_rt: ResourceType, namespace: str, name: str) -> None:
    """The Eviction API: 429 while a PodDisruptionBudget allows no disruption, else the
    pod is deleted."""
    pod = store.get(pods_rt, namespace, name).obj
    rt = store.registry.get("policy", "v1", "poddisruptionbudgets")
    assert rt is not None
    labels = pod["metadata"].get("labels") or {}
    running = (pod.get("status") or {}).get("phase") == "Running"
    for (ns, pdb_name), entry in sorted(store.bucket(rt).items()):
        if ns != namespace:
            continue
        if not selector_predicate((entry.obj.get("spec") or {}).get("selector") or {})(labels):
            continue
        status = pdb_status(store, entry.obj)
        if running and status["disruptionsAllowed"] < 1:
            raise ApiError(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                {
                    "causes": [
                        {
                            "reason": "DisruptionBudget",
                            "message": f"The disruption budget {pdb_name} needs "
                            f"{status['desiredHealthy']} healthy pods and has "
                            f"{status['currentHealthy']} currently",
                        }
                    ]
                },
            )
    store.delete(pods_rt, namespace, name)


def selector_predicate(selector: Obj) -> Callable[[Mapping[str, str]], bool]:
    """A PodDisruptionBudget's label selector as a predicate over labels."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    if not parts:
        return lambda labels: True  # an empty selector selects every pod of the namespace
    return label_selector(",".join(parts))
