"""Where a pod goes when its Migration names no destination (pure): a node that takes part
in live migration, is compatible with the source, is not cordoned, and fits the pod —
the fullest such node, so moves also pack the cluster."""

from __future__ import annotations

from collections.abc import Iterable

from clm.policy import objects as o
from clm.policy.compatibility import Requirements, compatible
from clm.policy.scheduling import fits, free_resources


def choose_destination(
    pod: o.Obj, source: o.Obj, nodes: Iterable[o.Obj], pods: Iterable[o.Obj], req: Requirements
) -> tuple[str | None, list[str]]:
    """(the chosen node's name or None, why each other node was not chosen)."""
    by_node: dict[str, list[o.Obj]] = {}
    for p in pods:
        node_name = o.spec(p).get("nodeName")
        if node_name and o.status(p).get("phase") not in ("Succeeded", "Failed"):
            by_node.setdefault(node_name, []).append(p)
    candidates: list[tuple[int, str]] = []
    why: list[str] = []
    for node in nodes:
        name = o.name(node)
        if name == o.name(source):
            continue
        if o.spec(node).get("unschedulable"):
            why.append(f"{name}: cordoned")
            continue
        problems = [*compatible(source, node, req), *fits(pod, node, by_node.get(name, []))]
        if problems:
            why.append(f"{name}: {problems[0].message}")
            continue
        free_cpu = free_resources(node, by_node.get(name, [])).get("cpu", 0)
        candidates.append((free_cpu, name))
    if not candidates:
        return None, why
    return min(candidates)[1], why
