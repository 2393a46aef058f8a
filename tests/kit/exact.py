"""The exact optimum of the drain problem, by CP-SAT, to measure the greedy planner's gap.

Same rules as binpack.plan: per-pod actions from the label matrix and mode, live
migrations only to compatible nodes, placement rules, capacity, PDB budgets, protected
pods keep their node, DaemonSet pods leave with their node. Maximises the number of
drained nodes. Only for small clusters (tests and the benchmark's gap report).
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from clm.policy import compatibility, scheduling
from clm.policy.binpack import PlannerConfig, Snapshot, pod_decision
from clm.policy.evictor import Action
from clm.policy.objects import spec


def max_drained(snap: Snapshot, config: PlannerConfig | None = None, time_limit: float = 20.0) -> int:
    config = config or PlannerConfig()
    req = config.requirements
    nodes = sorted(snap.nodes, key=lambda n: n.name)
    by_name = {n.name: n for n in nodes}
    problems = {n.name: compatibility.node_problems(n.obj, req) for n in nodes}
    model = cp_model.CpModel()
    drained = {n.name: model.new_bool_var(f"d[{n.name}]") for n in nodes}
    incoming: dict[str, list[tuple[cp_model.IntVar, dict[str, int]]]] = {n.name: [] for n in nodes}
    pdb_uses: dict[str, list[cp_model.IntVar]] = {}
    for n in nodes:
        mine = [p for p in snap.pods if p.node == n.name and not p.daemonset]
        if not mine or spec(n.obj).get("unschedulable"):
            model.add(drained[n.name] == 0)  # nothing to gain, or not ours to drain
    for pod in snap.pods:
        if pod.daemonset or pod.node not in by_name:
            continue
        decision = pod_decision(pod, problems[pod.node], config.mode)
        source = drained[pod.node]
        if decision.action is Action.NONE:
            model.add(source == 0)
            continue
        choices = []
        for dest in nodes:
            if dest.name == pod.node or scheduling.placement_problems(pod.obj, dest.obj, pod.zones):
                continue
            if decision.action is Action.LIVE_MIGRATE and compatibility.compatible(
                by_name[pod.node].obj, dest.obj, req
            ):
                continue
            x = model.new_bool_var(f"x[{pod.name},{dest.name}]")
            model.add_implication(x, drained[dest.name].Not())
            choices.append(x)
            incoming[dest.name].append((x, {**pod.requests, "pods": 1}))
        model.add(sum(choices) == source)
        if decision.action is Action.EVICT and pod.pdb is not None:
            pdb_uses.setdefault(pod.pdb, []).append(source)
    for pdb, uses in pdb_uses.items():
        model.add(sum(uses) <= snap.pdb_allowed.get(pdb, 0))
    for n in nodes:
        resources = {r for _, reqs in incoming[n.name] for r in reqs}
        for resource in resources:
            used = sum(
                p.requests.get(resource, 0) if resource != "pods" else 1
                for p in snap.pods
                if p.node == n.name
            )
            model.add(
                sum(x * reqs.get(resource, 0) for x, reqs in incoming[n.name])
                <= max(0, n.allocatable.get(resource, 0) - used)
            )
    if config.max_nodes is not None:
        model.add(sum(drained.values()) <= config.max_nodes)
    model.maximize(sum(drained.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 1
    status = solver.solve(model)
    if status != cp_model.OPTIMAL:
        raise RuntimeError(f"CP-SAT did not prove the optimum ({solver.status_name(status)})")
    return round(solver.objective_value)
