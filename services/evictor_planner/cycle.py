"""One planning cycle, pure: from what the cluster looks like to what to do now.

Order of work in a cycle:
1. Nodes about to be reclaimed (spot interruption) start draining at once, ahead of
   bin-packing and beyond the limit on nodes draining: their pods are lost otherwise.
2. Nodes already draining continue: every pod the label matrix moves and that is not
   already on its way gets a Migration (destination left to the coordinator) or an
   eviction; a node whose movable pods are all gone is finished; a node holding a pod
   whose migration failed and stayed (restore-on-source), or a protected pod, is given up.
3. Bin-packing (`clm.policy.binpack.plan`) on the snapshot picks new nodes to drain, best
   first, up to the limit on nodes draining at once; each move comes with the plan's
   destination. Skipped while paused (too many recent failures), and never for a node
   that is draining, reclaimed, or backing off after a failure.
4. Migrations are capped by the limit in flight (reclaimed nodes first); evictions are not
   (PodDisruptionBudgets, enforced by the API, pace them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from clm.contracts.fields import Fallback
from clm.policy import evictor
from clm.policy.binpack import Plan, PlannerConfig, PodInfo, Snapshot, plan
from clm.policy.evictor import Action

PodKey = tuple[str, str]  # namespace, name


@dataclass(frozen=True)
class Limits:
    migrations_in_flight: int = 10
    nodes_draining: int = 1


@dataclass(frozen=True)
class ClusterState:
    snapshot: Snapshot
    draining: frozenset[str] = frozenset()  # nodes this planner is draining
    reclaimed: frozenset[str] = frozenset()  # spot interruption notices
    busy: frozenset[PodKey] = frozenset()  # pods with an unfinished Migration, or terminating
    failed: frozenset[PodKey] = frozenset()  # pods whose latest Migration failed and that stayed
    migrations_in_flight: int = 0
    backing_off: frozenset[str] = frozenset()  # nodes not to start draining now
    paused: bool = False  # too many recent failures: no new bin-packing drains


@dataclass(frozen=True)
class StartDrain:
    node: str
    why: str  # "bin-packing" or "spot-interruption"
    saving: float = 0.0


@dataclass(frozen=True)
class Migrate:
    namespace: str
    pod: str
    node: str
    destination: str | None
    fallback: Fallback
    why: str


@dataclass(frozen=True)
class Evict:
    namespace: str
    pod: str
    node: str
    why: str


@dataclass(frozen=True)
class Finish:
    node: str


@dataclass(frozen=True)
class GiveUp:
    node: str
    why: str


Step = StartDrain | Migrate | Evict | Finish | GiveUp


@dataclass
class Decisions:
    steps: list[Step] = field(default_factory=list)
    plan: Plan | None = None
    deferred_migrations: int = 0  # over the in-flight limit: next cycle

    def of(self, kind: type) -> list:
        return [s for s in self.steps if isinstance(s, kind)]


def _pods_by_node(pods: Iterable[PodInfo]) -> dict[str, list[PodInfo]]:
    out: dict[str, list[PodInfo]] = {}
    for pod in pods:
        out.setdefault(pod.node, []).append(pod)
    return out


def _continue_drain(
    node: str, pods: list[PodInfo], state: ClusterState, config: PlannerConfig, out: Decisions, why: str
) -> None:
    moves: list[Step] = []
    waiting = False
    for pod in pods:
        key = (pod.namespace, pod.name)
        if pod.daemonset:
            continue  # leaves with its node
        if key in state.busy:
            waiting = True
            continue
        if key in state.failed and why != "spot-interruption":
            out.steps.append(
                GiveUp(node, f"the migration of {pod.namespace}/{pod.name} failed and it stayed")
            )
            return
        decision = evictor.decide(pod.labels, replicas=pod.replicas, mode=config.mode)
        if decision.action == Action.NONE:
            if why == "spot-interruption":
                continue  # protected: it stays with the node, as asked
            out.steps.append(GiveUp(node, f"{pod.namespace}/{pod.name} is protected: {decision.why}"))
            return
        if decision.action == Action.LIVE_MIGRATE:
            moves.append(Migrate(pod.namespace, pod.name, node, None, decision.fallback, decision.why))
        else:
            moves.append(Evict(pod.namespace, pod.name, node, decision.why))
    if not moves and not waiting:
        out.steps.append(Finish(node))
    out.steps.extend(moves)


def _for_planning(snapshot: Snapshot, closed: frozenset[str]) -> Snapshot:
    """The snapshot with draining and reclaimed nodes closed as destinations."""
    if not closed:
        return snapshot
    nodes = []
    for info in snapshot.nodes:
        if info.name in closed and not (info.obj.get("spec") or {}).get("unschedulable"):
            obj = {**info.obj, "spec": {**(info.obj.get("spec") or {}), "unschedulable": True}}
            nodes.append(replace(info, obj=obj))
        else:
            nodes.append(info)
    return replace(snapshot, nodes=nodes)


def decide(state: ClusterState, config: PlannerConfig, limits: Limits) -> Decisions:
    out = Decisions()
    by_node = _pods_by_node(state.snapshot.pods)
    known = {n.name for n in state.snapshot.nodes}

    for node in sorted(state.reclaimed & known):
        if node not in state.draining:
            out.steps.append(StartDrain(node, "spot-interruption"))
        _continue_drain(node, by_node.get(node, []), state, config, out, "spot-interruption")
    for node in sorted(state.draining - state.reclaimed):
        if node in known:
            _continue_drain(node, by_node.get(node, []), state, config, out, "bin-packing")

    ongoing = len(state.draining - state.reclaimed)
    room = limits.nodes_draining - ongoing
    if room > 0 and not state.paused:
        closed = state.draining | state.reclaimed
        out.plan = plan(_for_planning(state.snapshot, closed), config)
        skip = closed | state.backing_off
        for drain in out.plan.drains:
            if room <= 0:
                break
            if drain.node in skip:
                continue
            room -= 1
            out.steps.append(StartDrain(drain.node, "bin-packing", drain.saving))
            for move in drain.moves:
                if (move.namespace, move.name) in state.busy:
                    continue  # already on its way
                if move.action == Action.LIVE_MIGRATE:
                    out.steps.append(
                        Migrate(
                            move.namespace, move.name, drain.node, move.destination, move.fallback, move.why
                        )
                    )
                else:
                    out.steps.append(Evict(move.namespace, move.name, drain.node, move.why))
            if not drain.moves:
                out.steps.append(Finish(drain.node))

    budget = max(limits.migrations_in_flight - state.migrations_in_flight, 0)
    kept: list[Step] = []
    for step in out.steps:
        if isinstance(step, Migrate):
            if budget <= 0:
                out.deferred_migrations += 1
                continue
            budget -= 1
        kept.append(step)
    out.steps = kept
    return out
