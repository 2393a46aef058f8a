"""What a migration moves, fixed in its status once: the pod (by the UID its containers carry),
the source and destination nodes, the IP that goes along, and what a failure leads to."""

from __future__ import annotations

from typing import Any

from clm.contracts.protocol import StepFailed
from clm.policy import objects as o
from clm.policy.compatibility import Requirements
from clm.policy.destination import choose_destination
from clm.policy.evictor import matrix
from clm.policy.naming import runtime_pod_uid
from clm.policy.quantity import to_int
from services.coordinator.kube import now_iso
from services.coordinator.recorder import StatusRecorder, in_thread


async def resolve(record: StatusRecorder, requirements: Requirements) -> None:
    """Fill sourcePodUID, the nodes, podIP, the owner and the fallback (a resumed run keeps
    what an earlier one fixed)."""
    if record.status.get("sourcePodUID"):
        return
    spec, status, kube = record.spec, record.status, record.kube
    pod = await in_thread(kube.get_pod, record.namespace, spec["podName"])
    if pod is None:
        raise StepFailed(f"pod {record.namespace}/{spec['podName']} does not exist", stage="resolve")
    source = o.spec(pod).get("nodeName")
    if not source:
        raise StepFailed("the pod is not running on any node (spec.nodeName is empty)", stage="resolve")
    if spec.get("sourceNode") and spec["sourceNode"] != source:
        raise StepFailed(
            f"spec.sourceNode is {spec['sourceNode']} but the pod runs on {source}", stage="resolve"
        )
    ip = o.status(pod).get("podIP")
    if not ip:
        raise StepFailed("the pod has no IP (status.podIP) to hand over", stage="resolve")
    destination = spec.get("destinationNode") or status.get("destinationNode")
    if not destination:
        destination = await _choose_destination(record, pod, source, requirements)
    if destination == source:
        raise StepFailed(f"the pod already runs on {destination}", stage="resolve")
    owner = o.controller_ref(pod)
    kind = (owner or {}).get("kind", "")
    # A StatefulSet pod's object is deleted before its namesake is created: keep it.
    kept = {"sourcePodSpec": pod} if kind == "StatefulSet" else {}
    # Unset in the spec: the label matrix decides what a failure leads to.
    fallback = spec.get("fallback") or str(matrix(o.labels(pod)).fallback)
    await record.patch(
        # For a clone this is its first ancestor's UID: what the agents find it by.
        sourcePodUID=runtime_pod_uid(pod),
        sourceNode=source,
        destinationNode=destination,
        podIP=ip,
        ownerKind=kind,
        startTime=now_iso(),
        fallback=fallback,
        podMemoryBytes=pod_memory_bytes(pod),
        **kept,
    )


def pod_memory_bytes(pod: dict[str, Any]) -> int:
    """What the pod may hold in memory: its containers' limits, else their requests."""
    total = 0
    for container in o.containers(pod):
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get("memory") or (resources.get("requests") or {}).get(
            "memory"
        )
        if value is not None:
            total += to_int("memory", value)
    return total


async def _choose_destination(
    record: StatusRecorder, pod: dict[str, Any], source: str, requirements: Requirements
) -> str:
    nodes = await in_thread(record.kube.list_nodes)
    source_node = next((n for n in nodes if o.name(n) == source), None)
    if source_node is None:
        raise StepFailed(f"the source node {source} does not exist", stage="resolve")
    pods = await in_thread(record.kube.list_pods)
    chosen, why = choose_destination(pod, source_node, nodes, pods, requirements)
    if chosen is None:
        raise StepFailed("no node can take the pod: " + ("; ".join(why) or "no other nodes"), stage="resolve")
    return chosen
