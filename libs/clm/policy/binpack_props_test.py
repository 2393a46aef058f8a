"""Property-based tests of the planner's invariants on random clusters."""

import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clm.policy import compatibility, scheduling
from clm.policy.binpack import Plan, PlannerConfig, Snapshot, plan, pod_decision
from clm.policy.evictor import Action, Mode
from tests.kit.clusters import random_cluster

clusters = st.builds(
    lambda seed, nodes, per_node, fill: random_cluster(
        random.Random(seed), nodes=nodes, pods_per_node=per_node, fill=fill
    ),
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(0, 8),
    st.floats(0.1, 1.0),
)
configs = st.builds(
    PlannerConfig, mode=st.sampled_from(list(Mode)), max_nodes=st.one_of(st.none(), st.integers(1, 4))
)


def check(snap: Snapshot, result: Plan, config: PlannerConfig) -> None:
    nodes = {n.name: n for n in snap.nodes}
    drained = set(result.nodes)
    assert len(drained) == len(result.nodes), "a node is drained twice"
    pods = {(p.namespace, p.name): p for p in snap.pods}
    moved = {}
    for drain in result.drains:
        for move in drain.moves:
            key = (move.namespace, move.name)
            assert key not in moved, "a pod is moved twice"
            moved[key] = move
    usage: dict[str, Counter[str]] = {name: Counter() for name in nodes}
    evictions: Counter[str | None] = Counter()
    for key, pod in pods.items():
        decision = pod_decision(
            pod, compatibility.node_problems(nodes[pod.node].obj, config.requirements), config.mode
        )
        if pod.node in drained and not pod.daemonset:
            # Every pod of a drained node goes somewhere; protected pods are never touched.
            assert key in moved, f"{key} left behind on drained {pod.node}"
            assert decision.action is not Action.NONE, f"protected {key} moved"
        if key not in moved:
            usage[pod.node].update({**pod.requests, "pods": 1})
            continue
        move = moved[key]
        assert not pod.daemonset, f"DaemonSet pod {key} moved"
        assert pod.node in drained
        assert move.action is decision.action
        dest = nodes[move.destination]
        assert move.destination not in drained and move.destination != pod.node
        assert not scheduling.placement_problems(pod.obj, dest.obj, pod.zones), (key, move)
        if move.action is Action.LIVE_MIGRATE:
            assert not compatibility.compatible(nodes[pod.node].obj, dest.obj, config.requirements)
        else:
            evictions[pod.pdb] += 1
        usage[move.destination].update({**pod.requests, "pods": 1})
    for name, used in usage.items():
        if name in drained:
            continue
        for resource, amount in used.items():
            before = sum(
                p.requests.get(resource, 0) if resource != "pods" else 1 for p in snap.pods if p.node == name
            )
            # Never overcommit: a node that was within its allocatable stays within it.
            if before <= nodes[name].allocatable.get(resource, 0):
                assert amount <= nodes[name].allocatable.get(resource, 0), (name, resource)
    for pdb, count in evictions.items():
        if pdb is not None:
            assert count <= snap.pdb_allowed.get(pdb, 0), f"PDB {pdb} broken"
    if config.max_nodes is not None:
        assert len(drained) <= config.max_nodes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters, configs)
def test_plans_keep_every_invariant(snap: Snapshot, config: PlannerConfig) -> None:
    check(snap, plan(snap, config), config)


@settings(max_examples=60, deadline=None)
@given(clusters, st.randoms(use_true_random=False))
def test_plans_are_deterministic_whatever_the_input_order(snap: Snapshot, rnd: random.Random) -> None:
    shuffled = Snapshot(
        nodes=rnd.sample(snap.nodes, len(snap.nodes)),
        pods=rnd.sample(snap.pods, len(snap.pods)),
        pdb_allowed=dict(snap.pdb_allowed),
    )
    assert plan(snap) == plan(shuffled) == plan(snap)
