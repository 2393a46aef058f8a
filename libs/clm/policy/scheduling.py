"""Can a node take a pod? The scheduler's hard rules, as far as a migration destination
needs them: free resources, taints and tolerations, nodeSelector, required node affinity,
cordon, and the zones the pod's volumes pin it to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from clm.policy import objects as o
from clm.policy.reasons import Reason

HARD_EFFECTS = ("NoSchedule", "NoExecute")


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        op = tol.get("operator", "Equal")
        key = tol.get("key")
        if op == "Exists" and (not key or key == taint.get("key")):
            return True
        if op == "Equal" and key == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def untolerated_taints(pod: o.Obj, node: o.Obj) -> list[Mapping[str, Any]]:
    tolerations = o.spec(pod).get("tolerations") or []
    return [
        t
        for t in o.spec(node).get("taints") or []
        if t.get("effect") in HARD_EFFECTS and not tolerates(tolerations, t)
    ]


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = str(expr.get("key", "")), expr.get("operator"), expr.get("values") or []
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: Mapping[str, Any], node: o.Obj) -> bool:
    labels = o.labels(node)
    fields = {"metadata.name": o.name(node)}
    return all(_expression_matches(e, labels) for e in term.get("matchExpressions") or []) and all(
        _expression_matches(e, fields) for e in term.get("matchFields") or []
    )


def affinity_matches(pod: o.Obj, node: o.Obj) -> bool:
    selector = o.spec(pod).get("nodeSelector") or {}
    labels = o.labels(node)
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    required = ((o.spec(pod).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    # Terms are ORed; an empty list matches nothing, a missing one everything.
    return terms is None or any(_term_matches(t, node) for t in terms)


def placement_problems(pod: o.Obj, node: o.Obj, zones: frozenset[str] | None) -> list[Reason]:
    """Everything but resources: the node-level rules that do not change as pods move."""
    name = o.name(node)
    problems = []
    if o.spec(node).get("unschedulable"):
        problems.append(Reason("cordoned", f"node {name} is cordoned"))
    for taint in untolerated_taints(pod, node):
        problems.append(
            Reason(
                "taint",
                f"node {name} has taint {taint.get('key')}"
                f"={taint.get('value', '')}:{taint.get('effect')} the pod does not tolerate",
            )
        )
    if not affinity_matches(pod, node):
        problems.append(
            Reason(
                "affinity", f"node {name} does not match the pod's nodeSelector " "or required node affinity"
            )
        )
    zone = o.labels(node).get("topology.kubernetes.io/zone")
    if zones is not None and zone not in zones:
        problems.append(
            Reason(
                "zone",
                f"node {name} is in {zone or 'no zone'}; the pod's volumes "
                f"need {', '.join(sorted(zones))}",
            )
        )
    return problems


def resource_problems(requests: Mapping[str, int], free: Mapping[str, int], node_name: str) -> list[Reason]:
    """`free` is allocatable minus what the pods already there request (pods counted too)."""
    problems = []
    for resource, amount in requests.items():
        if amount > free.get(resource, 0):
            problems.append(
                Reason(
                    "insufficient-" + resource.replace("/", "-").replace(".", "-"),
                    f"node {node_name} has {free.get(resource, 0)} {resource} free, "
                    f"the pod needs {amount}",
                )
            )
    return problems


def free_resources(node: o.Obj, pods_on_node: Iterable[o.Obj]) -> dict[str, int]:
    free = o.node_allocatable(node)
    for pod in pods_on_node:
        for resource, amount in o.pod_requests(pod).items():
            free[resource] = free.get(resource, 0) - amount
        free["pods"] = free.get("pods", 0) - 1
    return free


def fits(
    pod: o.Obj, node: o.Obj, pods_on_node: Iterable[o.Obj], zones: frozenset[str] | None = None
) -> list[Reason]:
    """Every reason `node` cannot take `pod` now (empty: it can)."""
    requests = {**o.pod_requests(pod), "pods": 1}
    return [
        *placement_problems(pod, node, zones),
        *resource_problems(requests, free_resources(node, pods_on_node), o.name(node)),
    ]
