"""Scenarios for the planner; the invariants are property-tested in binpack_props_test.py."""

from clm.contracts.fields import Fallback
from clm.policy import names
from clm.policy.binpack import NodeInfo, PlannerConfig, PodInfo, Snapshot, plan, snapshot_from_objects
from clm.policy.evictor import Action, Mode
from clm.policy.objects import node_allocatable
from tests.kit import builders as b

GI = 2**30
ELIGIBLE = {names.MIGRATION_ENABLED: "true"}


def node(name: str, cpu: str = "4", memory: str = "16Gi", price: float | None = None, **kw) -> NodeInfo:
    obj = b.node(name, cpu=cpu, memory=memory, **kw)
    return NodeInfo(name, node_allocatable(obj), obj, price)


def pod(
    name: str, on: str, cpu: int = 500, mem_gib: float = 1, labels=None, replicas: int = 3, **kw
) -> PodInfo:
    return PodInfo(
        "default",
        name,
        on,
        {"cpu": cpu, "memory": int(mem_gib * GI)},
        dict(ELIGIBLE if labels is None else labels),
        replicas=replicas,
        **kw,
    )


def test_fragmented_cluster_drains_the_emptiest_node() -> None:
    snap = Snapshot(
        nodes=[node("a"), node("b"), node("c")],
        pods=[
            pod("a1", "a", mem_gib=6),
            pod("a2", "a", mem_gib=4),
            pod("b1", "b", mem_gib=7),
            pod("c1", "c", mem_gib=1),
        ],
    )
    result = plan(snap)
    assert result.nodes[0] == "c"
    [move] = result.drains[0].moves
    assert move.name == "c1" and move.action is Action.LIVE_MIGRATE and move.fallback is Fallback.EVICT
    assert move.destination in ("a", "b")


def test_best_fit_prefers_the_fullest_node_that_fits() -> None:
    snap = Snapshot(
        nodes=[node("full"), node("half"), node("src")],
        pods=[pod("f", "full", mem_gib=14), pod("h", "half", mem_gib=8), pod("s", "src", mem_gib=2)],
    )
    assert plan(snap).drains[0].moves[0].destination == "full"


def test_protected_pods_block_their_node() -> None:
    protected = {**ELIGIBLE, names.REMOVAL_DISABLED: "true", names.LIVE_MIGRATION_DISABLED: "true"}
    snap = Snapshot(
        nodes=[node("a"), node("b")],
        pods=[pod("keep", "a", mem_gib=1, labels=protected), pod("b1", "b", mem_gib=8)],
    )
    result = plan(snap)
    assert "a" not in result.nodes
    [rejection] = [r for r in result.rejections if r.node == "a"]
    assert rejection.reasons[0].code == "protected-pod"


def test_daemonset_pods_are_never_moved() -> None:
    snap = Snapshot(
        nodes=[node("a"), node("b")],
        pods=[
            pod("ds-a", "a", daemonset=True),
            pod("ds-b", "b", daemonset=True),
            pod("app", "a", mem_gib=1),
            pod("big", "b", mem_gib=9),
        ],
    )
    result = plan(snap)
    assert result.nodes == ["a"]
    assert [m.name for m in result.drains[0].moves] == ["app"]


def test_default_mode_evicts_single_replicas_aggressive_migrates_them() -> None:
    snap = Snapshot(
        nodes=[node("a"), node("b")], pods=[pod("solo", "a", replicas=1), pod("b1", "b", mem_gib=8)]
    )
    assert plan(snap).drains[0].moves[0].action is Action.EVICT
    aggressive = plan(snap, PlannerConfig(mode=Mode.AGGRESSIVE))
    assert aggressive.drains[0].moves[0].action is Action.LIVE_MIGRATE


def test_live_migration_only_to_compatible_nodes_but_eviction_anywhere() -> None:
    nodes = [node("src", instance_type="c5.large"), node("old", instance_type="c4.large")]
    migrating = Snapshot(nodes=nodes, pods=[pod("p", "src"), pod("o", "old", mem_gib=8)])
    result = plan(migrating)
    assert "src" not in result.nodes
    assert [r.reasons[0].code for r in result.rejections if r.node == "src"] == ["no-destination"]
    evicting = Snapshot(nodes=nodes, pods=[pod("p", "src", labels={}), pod("o", "old", mem_gib=8)])
    assert plan(evicting).drains[0].moves[0].destination == "old"


def test_pdb_limits_evictions() -> None:
    pods = [
        pod("w1", "a", labels={}, pdb="default/web"),
        pod("w2", "a", labels={}, pdb="default/web"),
        pod("b1", "b", mem_gib=8),
        pod("c1", "c", mem_gib=8),
    ]
    nodes = [node("a"), node("b"), node("c")]
    assert "a" not in plan(Snapshot(nodes, pods, {"default/web": 1})).nodes
    assert "a" in plan(Snapshot(nodes, pods, {"default/web": 2})).nodes


def test_no_overcommit_when_nothing_fits() -> None:
    snap = Snapshot(
        nodes=[node("a", memory="8Gi"), node("b", memory="8Gi")],
        pods=[pod("a1", "a", mem_gib=5), pod("b1", "b", mem_gib=5)],
    )
    result = plan(snap)
    assert result.drains == ()
    assert {r.reasons[0].code for r in result.rejections} == {"no-destination"}


def test_expensive_near_empty_nodes_go_first() -> None:
    snap = Snapshot(
        nodes=[node("cheap", price=0.1), node("pricey", price=0.9), node("big", memory="64Gi")],
        pods=[pod("c", "cheap", mem_gib=1), pod("p", "pricey", mem_gib=1), pod("x", "big", mem_gib=30)],
    )
    assert plan(snap).nodes[:2] == ["pricey", "cheap"]


def test_node_that_receives_pods_is_not_drained_after() -> None:
    snap = Snapshot(nodes=[node("a"), node("b")], pods=[pod("a1", "a"), pod("b1", "b")])
    result = plan(snap)
    assert len(result.nodes) == 1
    assert [r.reasons[0].code for r in result.rejections] == ["receiving"]


def test_taints_and_cordon_are_respected() -> None:
    snap = Snapshot(
        nodes=[
            node("a"),
            node("tainted", taints=[{"key": "x", "effect": "NoSchedule"}]),
            node("cordoned", unschedulable=True),
        ],
        pods=[pod("a1", "a")],
    )
    result = plan(snap)
    assert result.drains == ()
    codes = {r.node: r.reasons[0].code for r in result.rejections}
    assert codes == {"a": "no-destination", "tainted": "empty", "cordoned": "cordoned"}


def test_max_nodes_limits_the_plan() -> None:
    snap = Snapshot(
        nodes=[node(f"n{i}") for i in range(5)] + [node("big", memory="64Gi", cpu="32")],
        pods=[pod(f"p{i}", f"n{i}") for i in range(5)] + [pod("x", "big", mem_gib=1)],
    )
    assert len(plan(snap, PlannerConfig(max_nodes=2)).nodes) == 2


def test_snapshot_from_kubernetes_objects() -> None:
    nodes = [b.node("a", memory="16Gi"), b.node("b", memory="16Gi")]
    web = [
        b.workload("Deployment", "web", replicas=2),
        b.workload("ReplicaSet", "web-1", replicas=2, owners=[b.owner("Deployment", "web")]),
    ]
    pods = [
        b.pod(
            "web-1-x",
            node="a",
            labels={**ELIGIBLE, "app": "web"},
            owners=[b.owner("ReplicaSet", "web-1")],
            containers=[b.container(memory="1Gi")],
        ),
        b.pod("ds-a", node="a", owners=[b.owner("DaemonSet", "ds")]),
        b.pod("big", node="b", containers=[b.container(memory="8Gi")]),
        b.pod("done", node="a", phase="Succeeded"),
    ]
    pdbs = [
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": 1},
        }
    ]
    snap = snapshot_from_objects(nodes=nodes, pods=pods, pdbs=pdbs, lookup=b.Store(web).lookup)
    by_name = {p.name: p for p in snap.pods}
    assert set(by_name) == {"web-1-x", "ds-a", "big"}
    assert by_name["web-1-x"].replicas == 2 and by_name["web-1-x"].pdb == "default/web"
    assert by_name["ds-a"].daemonset
    assert snap.pdb_allowed == {"default/web": 1}
    result = plan(snap)
    assert result.nodes == ["a"]
    assert [(m.name, m.action) for m in result.drains[0].moves] == [("web-1-x", Action.LIVE_MIGRATE)]
