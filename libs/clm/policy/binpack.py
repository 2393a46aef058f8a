"""The Evictor's plan: which nodes to drain, best first, and for every pod on them the
action and the destination — or why a node cannot be drained.

Rules the plan never breaks:
- no node is overcommitted (cpu, memory, pod count and any other requested resource);
- a pod that live-migrates goes only to a compatible node (compatibility.py), and any pod
  only to a node whose taints, selectors, affinity, cordon and zone pins allow it;
- DaemonSet pods are never moved (they leave with their node) and protected pods (action
  none) are never touched: a node holding one is not drained;
- evictions never exceed a PodDisruptionBudget's allowed disruptions;
- a node is drained only if all its pods can go somewhere.

Greedy and deterministic: candidates are taken in order of score (what draining saves
over what moving costs, so near-empty expensive nodes go first), each pod placed best-fit
(the fullest node that still fits). A node that receives pods is not drained later.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clm.contracts.fields import Fallback
from clm.policy import compatibility, evictor, names, scheduling
from clm.policy import objects as o
from clm.policy.compatibility import Requirements
from clm.policy.evictor import Action, Mode
from clm.policy.reasons import Reason

GIB = 2**30
# Destination tiers: 0 for nodes that stay anyway; drain candidates in TIER_BUCKETS buckets
# by drain order, those drained last first (they are the likeliest to stay).
STAYS = 0
TIER_BUCKETS = 8


@dataclass(slots=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    requests: dict[str, int]
    labels: dict[str, str]
    replicas: int = 1
    # DaemonSet and static pods: they leave with their node and are never moved.
    daemonset: bool = False
    # Key of the PodDisruptionBudget that selects this pod, if any.
    pdb: str | None = None
    # Zones the pod's volumes pin it to (None: any).
    zones: frozenset[str] | None = None
    # The raw pod, for tolerations, nodeSelector and affinity.
    obj: Mapping[str, Any] = field(default_factory=dict)
    # Resident memory to copy, if measured; else the memory request is the estimate.
    memory_bytes: int | None = None


@dataclass(slots=True)
class NodeInfo:
    name: str
    allocatable: dict[str, int]
    obj: Mapping[str, Any]
    # Hourly price; None: estimated from the node's size.
    price: float | None = None


@dataclass(slots=True)
class Snapshot:
    nodes: list[NodeInfo]
    pods: list[PodInfo]
    # PDB key -> disruptions allowed now (status.disruptionsAllowed).
    pdb_allowed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    mode: Mode = Mode.DEFAULT
    requirements: Requirements = field(default_factory=Requirements)
    max_nodes: int | None = None
    # Relative weight of copying one GiB by live migration and of one eviction, against a
    # node's hourly price.
    cost_per_gib_moved: float = 0.02
    cost_per_eviction: float = 0.05


@dataclass(frozen=True, slots=True)
class PodMove:
    namespace: str
    name: str
    action: Action
    fallback: Fallback
    destination: str
    why: str


@dataclass(frozen=True, slots=True)
class NodeDrain:
    node: str
    score: float
    saving: float
    moved_bytes: int
    moves: tuple[PodMove, ...]


@dataclass(frozen=True, slots=True)
class NodeRejection:
    node: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    drains: tuple[NodeDrain, ...]
    rejections: tuple[NodeRejection, ...]

    @property
    def nodes(self) -> list[str]:
        return [d.node for d in self.drains]


def estimated_price(allocatable: Mapping[str, int]) -> float:
    """On-demand-like hourly price from size, when the snapshot has none."""
    return allocatable.get("cpu", 0) / 1000 * 0.031 + allocatable.get("memory", 0) / GIB * 0.004


_BASIC_RESOURCES = frozenset({"cpu", "memory", "pods"})
# The placement signature of a pod with no tolerations, selectors, affinity or zone pins.
_PLAIN = ("None", "None", "None", None)


def _move_order(pod: _Pod) -> tuple[int, int, str, str]:
    """Largest first (first-fit decreasing), then by name for determinism."""
    return (-pod.mem, -pod.cpu, pod.info.namespace, pod.info.name)


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2] if values else 1


def pod_decision(info: PodInfo, source_problems: Iterable[Reason], mode: Mode) -> evictor.Decision:
    """The Evictor's decision for a pod in a plan: the label matrix and mode, except that a
    pod on a node that cannot live-migrate takes its fallback at once."""
    if info.daemonset:
        return evictor.Decision(Action.NONE, Fallback.NONE, "DaemonSet or static pod: leaves with its node")
    decision = evictor.decide(info.labels, replicas=info.replicas, mode=mode)
    problems = list(source_problems)
    if decision.action is not Action.LIVE_MIGRATE or not problems:
        return decision
    why = f"node cannot live-migrate ({problems[0].message})"
    if decision.fallback is Fallback.EVICT:
        return evictor.Decision(Action.EVICT, Fallback.NONE, f"{why}; evicted instead")
    return evictor.Decision(Action.NONE, Fallback.NONE, f"{why}; protected")


# ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pod:
    info: PodInfo
    action: Action
    fallback: Fallback
    why: str
    mem: int
    cpu: int
    other: tuple[tuple[str, int], ...]
    move_bytes: int
    signature: tuple[Any, ...] = ()


class _Planner:
    def __init__(self, snapshot: Snapshot, config: PlannerConfig) -> None:
        self.config = config
        self.req = config.requirements
        self.nodes = sorted(snapshot.nodes, key=lambda n: n.name)
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        count = len(self.nodes)
        self.free_cpu = [n.allocatable.get("cpu", 0) for n in self.nodes]
        self.free_mem = [n.allocatable.get("memory", 0) for n in self.nodes]
        self.free_pods = [n.allocatable.get("pods", 110) for n in self.nodes]
        self.free_other: list[dict[str, int]] = [
            {k: v for k, v in n.allocatable.items() if k not in _BASIC_RESOURCES} for n in self.nodes
        ]
        # Destinations are indexed by the tighter of their free cpu and memory, each as a
        # share of the median node: a node whose key reaches a pod's larger share surely
        # fits it, so best-fit lookups scan only a short stretch.
        self.cpu_weight = 1.0 / max(1, _median(self.free_cpu))
        self.mem_weight = 1.0 / max(1, _median(self.free_mem))
        self.cordoned = [bool(o.spec(n.obj).get("unschedulable")) for n in self.nodes]
        self.node_problems = [tuple(compatibility.node_problems(n.obj, self.req)) for n in self.nodes]
        self.class_keys = [compatibility.class_key(n.obj, self.req) for n in self.nodes]
        self.pdb_left = dict(snapshot.pdb_allowed)
        self.draining = [False] * count
        self.receiving = [False] * count
        self.unknown_node_pods: list[PodInfo] = []
        self._decisions: dict[tuple[Any, ...], evictor.Decision] = {}
        # Per node: pods to move (largest first), pods that must stay, bytes and evictions.
        self.movable: list[list[_Pod]] = [[] for _ in range(count)]
        self.protected: list[list[_Pod]] = [[] for _ in range(count)]
        self.moved_bytes = [0] * count
        self.evictions = [0] * count
        for info in snapshot.pods:
            idx = self.index.get(info.node)
            if idx is None:
                self.unknown_node_pods.append(info)
                continue
            pod = self._digest(info, idx)
            self.free_cpu[idx] -= pod.cpu
            self.free_mem[idx] -= pod.mem
            self.free_pods[idx] -= 1
            for k, v in pod.other:
                self.free_other[idx][k] = self.free_other[idx].get(k, 0) - v
            if info.daemonset:
                continue
            if pod.action is Action.NONE:
                self.protected[idx].append(pod)
            elif pod.action is Action.LIVE_MIGRATE:
                self.moved_bytes[idx] += pod.move_bytes
            else:
                self.evictions[idx] += 1
            self.movable[idx].append(pod)
        order = _move_order
        for pods in self.movable:
            pods.sort(key=order)
        for pods in self.protected:
            pods.sort(key=order)
        # Destinations are tried tier by tier (see TIER_BUCKETS), best fit within a tier.
        self.tier = [STAYS] * count
        # signature -> sorted [(tier, free_mem, node index)] of statically feasible destinations
        self.groups: dict[tuple[Any, ...], list[tuple[int, float, int]]] = {}
        self.group_members: list[list[tuple[Any, ...]]] = [[] for _ in range(count)]
        self._static_cache: dict[tuple[Any, ...], bool] = {}
        self._pair_cache: dict[tuple[Any, Any], bool] = {}

    def _digest(self, info: PodInfo, idx: int) -> _Pod:
        labels = info.labels
        # The decision depends only on these; most pods share one of a handful of answers.
        decision_key = (
            labels.get(names.MIGRATION_ENABLED),
            labels.get(names.REMOVAL_DISABLED),
            labels.get(names.LIVE_MIGRATION_DISABLED),
            info.replicas > 1,
            info.daemonset,
            idx if self.node_problems[idx] else -1,
        )
        decision = self._decisions.get(decision_key)
        if decision is None:
            decision = pod_decision(info, self.node_problems[idx], self.config.mode)
            self._decisions[decision_key] = decision
        req = info.requests
        mem = req.get("memory", 0)
        other = (
            ()
            if req.keys() <= _BASIC_RESOURCES
            else tuple(sorted((k, v) for k, v in req.items() if k not in _BASIC_RESOURCES))
        )
        pod = _Pod(
            info,
            decision.action,
            decision.fallback,
            decision.why,
            mem,
            req.get("cpu", 0),
            other,
            info.memory_bytes if info.memory_bytes is not None else mem,
        )
        spec = o.spec(info.obj)
        tolerations, selector = spec.get("tolerations"), spec.get("nodeSelector")
        affinity = (spec.get("affinity") or {}).get("nodeAffinity")
        placement = (
            (repr(tolerations), repr(selector), repr(affinity), info.zones)
            if tolerations or selector or affinity or info.zones is not None
            else _PLAIN
        )
        source_class = self.class_keys[idx] if pod.action is Action.LIVE_MIGRATE else None
        pod.signature = (placement, source_class)
        return pod

    # --- destinations -------------------------------------------------------------

    def _statically_ok(self, pod: _Pod, dest: int) -> bool:
        node = self.nodes[dest]
        # Selectors and affinity read labels and the name: then the node itself is the key.
        selective = pod.signature[0][1:3] != ("None", "None")
        node_key = (
            repr(o.spec(node.obj).get("taints")),
            o.labels(node.obj).get(names.ZONE),
            node.name if selective else None,
            self.cordoned[dest],
        )
        key = (pod.signature[0], node_key)
        ok = self._static_cache.get(key)
        if ok is None:
            ok = not scheduling.placement_problems(pod.info.obj, node.obj, pod.info.zones)
            self._static_cache[key] = ok
        if ok and pod.action is Action.LIVE_MIGRATE:
            if self.node_problems[dest]:
                return False
            pair = (pod.signature[1], self.class_keys[dest])
            compatible = self._pair_cache.get(pair)
            if compatible is None:
                src = self.index[pod.info.node]
                problems = compatibility.pair_problems(self.nodes[src].obj, node.obj, self.req)
                # Per class pair, not per node pair: the source itself is excluded in _place.
                compatible = all(p.code == "same-node" for p in problems)
                self._pair_cache[pair] = compatible
            ok = compatible
        return ok

    def _group(self, pod: _Pod) -> list[tuple[int, float, int]]:
        group = self.groups.get(pod.signature)
        if group is None:
            group = sorted(
                (self.tier[i], self._key(i), i)
                for i in range(len(self.nodes))
                if not self.draining[i] and self._statically_ok(pod, i)
            )
            self.groups[pod.signature] = group
            for _, _, i in group:
                self.group_members[i].append(pod.signature)
        return group

    def _key(self, idx: int) -> float:
        return min(self.free_mem[idx] * self.mem_weight, self.free_cpu[idx] * self.cpu_weight)

    def _reindex(self, idx: int, *, cpu: int = 0, mem: int = 0, tier: int | None = None) -> None:
        """Change a node's free cpu/memory by (cpu, mem) or its tier, keeping groups sorted."""
        old = (self.tier[idx], self._key(idx), idx)
        self.free_cpu[idx] += cpu
        self.free_mem[idx] += mem
        if tier is not None:
            self.tier[idx] = tier
        new = (self.tier[idx], self._key(idx), idx)
        if new == old:
            return
        for sig in self.group_members[idx]:
            group = self.groups[sig]
            del group[bisect.bisect_left(group, old)]
            bisect.insort(group, new)

    def _fits(self, pod: _Pod, idx: int) -> bool:
        if self.free_cpu[idx] < pod.cpu or self.free_mem[idx] < pod.mem or self.free_pods[idx] < 1:
            return False
        free = self.free_other[idx]
        return all(free.get(k, 0) >= v for k, v in pod.other)

    def _place(self, pod: _Pod, exclude: int) -> int | None:
        """Best fit (least free by the index key) among nodes that fit, stayers first."""
        group = self._group(pod)
        low = min(pod.mem * self.mem_weight, pod.cpu * self.cpu_weight)
        for tier in range(TIER_BUCKETS + 1):
            pos = bisect.bisect_left(group, (tier, low, -1))
            while pos < len(group) and group[pos][0] == tier:
                idx = group[pos][2]
                if idx != exclude and self._fits(pod, idx):
                    return idx
                pos += 1
        return None

    def _apply(self, pod: _Pod, idx: int, *, sign: int) -> None:
        self.free_pods[idx] -= sign
        for k, v in pod.other:
            self.free_other[idx][k] = self.free_other[idx].get(k, 0) - sign * v
        self._reindex(idx, cpu=-sign * pod.cpu, mem=-sign * pod.mem)

    def _remove_from_groups(self, idx: int) -> None:
        for sig in self.group_members[idx]:
            group = self.groups[sig]
            del group[bisect.bisect_left(group, (self.tier[idx], self._key(idx), idx))]
        self.group_members[idx] = []

    # --- candidates -------------------------------------------------------------

    def _score(self, idx: int) -> tuple[float, float, int]:
        node = self.nodes[idx]
        saving = node.price if node.price is not None else estimated_price(node.allocatable)
        moved = self.moved_bytes[idx]
        cost = (
            moved / GIB * self.config.cost_per_gib_moved + self.evictions[idx] * self.config.cost_per_eviction
        )
        return saving / (1.0 + cost / max(saving, 1e-9)), saving, moved

    def _blockers(self, idx: int) -> list[Reason]:
        name = self.nodes[idx].name
        if self.cordoned[idx]:
            return [Reason("cordoned", f"node {name} is already cordoned (being drained elsewhere)")]
        if not self.movable[idx] and not self.protected[idx]:
            return [Reason("empty", f"node {name} runs only DaemonSet pods: nothing to move")]
        return [
            Reason("protected-pod", f"pod {p.info.namespace}/{p.info.name} stays: {p.why}")
            for p in self.protected[idx]
        ]

    def _try_drain(self, idx: int) -> tuple[list[tuple[_Pod, int]], list[Reason]]:
        placed: list[tuple[_Pod, int]] = []
        spent: dict[str, int] = {}
        for pod in self.movable[idx]:
            if pod.action is Action.EVICT and pod.info.pdb is not None:
                left = self.pdb_left.get(pod.info.pdb, 0) - spent.get(pod.info.pdb, 0)
                if left < 1:
                    self._undo(placed)
                    return [], [
                        Reason(
                            "pdb",
                            f"evicting {pod.info.namespace}/{pod.info.name} would "
                            f"break PodDisruptionBudget {pod.info.pdb}",
                        )
                    ]
                spent[pod.info.pdb] = spent.get(pod.info.pdb, 0) + 1
            dest = self._place(pod, exclude=idx)
            if dest is None:
                self._undo(placed)
                what = "compatible node" if pod.action is Action.LIVE_MIGRATE else "node"
                return [], [
                    Reason(
                        "no-destination",
                        f"no {what} has room for " f"{pod.info.namespace}/{pod.info.name} ({pod.action})",
                    )
                ]
            self._apply(pod, dest, sign=+1)
            placed.append((pod, dest))
        for pdb, n in spent.items():
            self.pdb_left[pdb] = self.pdb_left.get(pdb, 0) - n
        return placed, []

    def _undo(self, placed: list[tuple[_Pod, int]]) -> None:
        for pod, dest in reversed(placed):
            self._apply(pod, dest, sign=-1)

    def plan(self) -> Plan:
        rejections: list[NodeRejection] = []
        candidates = []
        for idx in range(len(self.nodes)):
            blockers = self._blockers(idx)
            if blockers:
                rejections.append(NodeRejection(self.nodes[idx].name, tuple(blockers)))
            else:
                score, saving, moved = self._score(idx)
                candidates.append((-score, self.nodes[idx].name, idx, saving, moved))
        candidates.sort()
        for position, (_, _, idx, _, _) in enumerate(candidates):
            self.tier[idx] = TIER_BUCKETS - position * TIER_BUCKETS // len(candidates)
        # A node whose largest pod fits nowhere can never drain: say so now, and let it
        # count as a node that stays when choosing destinations.
        viable = []
        for candidate in candidates:
            idx = candidate[2]
            largest = self.movable[idx][0]
            if self._place(largest, exclude=idx) is None:
                what = "compatible node" if largest.action is Action.LIVE_MIGRATE else "node"
                rejections.append(
                    NodeRejection(
                        candidate[1],
                        (
                            Reason(
                                "no-destination",
                                f"no {what} has room for {largest.info.namespace}/"
                                f"{largest.info.name} ({largest.action})",
                            ),
                        ),
                    )
                )
                self._reindex(idx, tier=STAYS)
            else:
                viable.append(candidate)
        drains: list[NodeDrain] = []
        for neg_score, name, idx, saving, moved in viable:
            if self.config.max_nodes is not None and len(drains) >= self.config.max_nodes:
                limit = Reason("limit", "the plan's node limit was reached")
                rejections.append(NodeRejection(name, (limit,)))
                self._reindex(idx, tier=STAYS)
                continue
            if self.receiving[idx]:
                rejections.append(
                    NodeRejection(
                        name, (Reason("receiving", f"node {name} receives pods from a node drained first"),)
                    )
                )
                continue
            placed, reasons = self._try_drain(idx)
            if reasons:
                rejections.append(NodeRejection(name, tuple(reasons)))
                self._reindex(idx, tier=STAYS)
                continue
            self.draining[idx] = True
            self._remove_from_groups(idx)
            moves = []
            for pod, dest in placed:
                if not self.receiving[dest]:
                    self.receiving[dest] = True
                    self._reindex(dest, tier=STAYS)
                moves.append(
                    PodMove(
                        pod.info.namespace,
                        pod.info.name,
                        pod.action,
                        pod.fallback,
                        self.nodes[dest].name,
                        pod.why,
                    )
                )
            moves.sort(key=lambda m: (m.namespace, m.name))
            drains.append(NodeDrain(name, -neg_score, saving, moved, tuple(moves)))
        rejections.sort(key=lambda r: r.node)
        return Plan(tuple(drains), tuple(rejections))


def plan(snapshot: Snapshot, config: PlannerConfig | None = None) -> Plan:
    """The drain plan for `snapshot` (deterministic: the same input gives the same plan)."""
    # A plan allocates a few objects per pod and creates no reference cycles; with the
    # cyclic collector running, its full passes over 150,000+ young objects cost ~40 % of
    # the time at 5,000 nodes. Reference counting still frees everything as usual.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _Planner(snapshot, config or PlannerConfig()).plan()
    finally:
        if paused:
            gc.enable()


# --- building a snapshot from Kubernetes objects ----------------------------------------


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    return all(scheduling._expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def snapshot_from_objects(
    *,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    pdbs: Iterable[Mapping[str, Any]] = (),
    lookup: Any = None,
    prices: Mapping[str, float] | None = None,
) -> Snapshot:
    """Digest API objects (as the Kubernetes API returns them) into a Snapshot.
    `lookup(kind, namespace, name)` resolves owners and volumes (see eligibility.py)."""
    from clm.policy.eligibility import assess  # - avoids a cycle at import time

    lookup = lookup or (lambda kind, ns, name: None)
    pdb_list = [
        (
            f"{o.namespace(p)}/{o.name(p)}",
            o.namespace(p),
            o.spec(p).get("selector"),
            int(o.status(p).get("disruptionsAllowed", 0)),
        )
        for p in pdbs
    ]
    node_infos = [NodeInfo(o.name(n), o.node_allocatable(n), n, (prices or {}).get(o.name(n))) for n in nodes]
    pod_infos = []
    for pod in pods:
        if o.status(pod).get("phase") in ("Succeeded", "Failed"):
            continue
        assessment = assess(pod, lookup)
        labels = o.labels(pod)
        pdb = next(
            (key for key, ns, sel, _ in pdb_list if ns == o.namespace(pod) and _selects(sel, labels)), None
        )
        pod_infos.append(
            PodInfo(
                namespace=o.namespace(pod),
                name=o.name(pod),
                node=o.spec(pod).get("nodeName", ""),
                requests=o.pod_requests(pod),
                labels=labels,
                replicas=assessment.workload.replicas,
                daemonset=assessment.workload.kind in ("DaemonSet", "Node"),
                pdb=pdb,
                zones=assessment.zones,
                obj=pod,
            )
        )
    return Snapshot(node_infos, pod_infos, {key: allowed for key, _, _, allowed in pdb_list})
