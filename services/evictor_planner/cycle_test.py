from clm.contracts.fields import Fallback
from clm.policy import names
from clm.policy.binpack import NodeInfo, PlannerConfig, PodInfo, Snapshot
from clm.policy.evictor import Mode
from clm.policy.objects import node_allocatable
from services.evictor_planner.cycle import (
    ClusterState,
    Evict,
    Finish,
    GiveUp,
    Limits,
    Migrate,
    StartDrain,
    decide,
)
from tests.kit import builders as b

GI = 2**30
ELIGIBLE = {names.MIGRATION_ENABLED: "true"}


def node(name: str) -> NodeInfo:
    obj = b.node(name, cpu="4", memory="16Gi")
    return NodeInfo(name, node_allocatable(obj), obj, None)


def pod(name: str, on: str, mem_gib: float = 1, labels=None, replicas: int = 3, **kw) -> PodInfo:
    return PodInfo(
        "default",
        name,
        on,
        {"cpu": 200, "memory": int(mem_gib * GI)},
        dict(ELIGIBLE if labels is None else labels),
        replicas=replicas,
        **kw,
    )


def fragmented() -> Snapshot:
    return Snapshot(
        nodes=[node("a"), node("b"), node("c")],
        pods=[
            pod("a1", "a", 8),
            pod("b1", "b", 9),
            pod("ds-c", "c", 0.1, daemonset=True),
            pod("web", "c", 1),
            pod("plain", "c", 1, labels={}),
            pod("solo", "c", 1, replicas=1),
        ],
    )


def test_bin_packing_drains_the_emptiest_node_per_the_label_matrix() -> None:
    out = decide(ClusterState(fragmented()), PlannerConfig(), Limits())
    assert out.of(StartDrain) == [StartDrain("c", "bin-packing", out.of(StartDrain)[0].saving)]
    [web] = out.of(Migrate)
    assert (web.pod, web.node, web.fallback) == ("web", "c", Fallback.EVICT)
    assert web.destination in ("a", "b")  # the plan's destination
    # Not labeled: evicted. Single replica in default mode: evicted too.
    assert sorted(e.pod for e in out.of(Evict)) == ["plain", "solo"]
    assert not out.of(Finish)


def test_aggressive_mode_migrates_single_replica_pods() -> None:
    out = decide(ClusterState(fragmented()), PlannerConfig(mode=Mode.AGGRESSIVE), Limits())
    assert sorted(m.pod for m in out.of(Migrate)) == ["solo", "web"]
    assert [e.pod for e in out.of(Evict)] == ["plain"]


def test_a_reclaimed_node_goes_first_even_beyond_the_drain_limit() -> None:
    snap = fragmented()
    state = ClusterState(snap, draining=frozenset({"c"}), reclaimed=frozenset({"a"}))
    out = decide(state, PlannerConfig(), Limits(nodes_draining=1))
    assert out.steps[0] == StartDrain("a", "spot-interruption")
    moved = out.steps[1]
    assert isinstance(moved, Migrate)
    # No destination: the coordinator picks it (the spot node's pods cannot wait for a plan).
    assert (moved.namespace, moved.pod, moved.node, moved.destination, moved.fallback) == (
        "default",
        "a1",
        "a",
        None,
        Fallback.EVICT,
    )
    assert moved.why == "eligible: live-migrate, evict if it fails"
    assert {s.node for s in out.of(StartDrain)} == {"a"}  # "c" was already draining: no new one


def test_a_draining_node_finishes_once_only_daemonset_pods_remain() -> None:
    snap = fragmented()
    busy = frozenset({("default", "web"), ("default", "plain"), ("default", "solo")})
    state = ClusterState(snap, draining=frozenset({"c"}), busy=busy, migrations_in_flight=1)
    out = decide(state, PlannerConfig(), Limits())
    assert not out.of(Finish) and not out.of(Migrate) and not out.of(Evict)  # waiting for them
    assert not out.of(StartDrain)  # one node draining already: the limit

    gone = Snapshot(snap.nodes, [p for p in snap.pods if p.name in ("a1", "b1", "ds-c")])
    out = decide(ClusterState(gone, draining=frozenset({"c"})), PlannerConfig(), Limits())
    assert out.of(Finish) == [Finish("c")]


def test_a_failed_migration_that_stayed_or_a_protected_pod_gives_the_drain_up() -> None:
    snap = fragmented()
    failed = ClusterState(snap, draining=frozenset({"c"}), failed=frozenset({("default", "web")}))
    [give_up] = decide(failed, PlannerConfig(), Limits()).of(GiveUp)
    assert give_up.node == "c" and "web" in give_up.why

    protected = Snapshot(snap.nodes, [*snap.pods, pod("keep", "c", labels={names.REMOVAL_DISABLED: "true"})])
    out = decide(ClusterState(protected, draining=frozenset({"c"})), PlannerConfig(), Limits())
    assert "keep" in out.of(GiveUp)[0].why
    # ... and bin-packing never picks a node holding a protected pod.
    assert "c" not in {
        s.node for s in decide(ClusterState(protected), PlannerConfig(), Limits()).of(StartDrain)
    }


def test_limits_pause_and_back_off() -> None:
    snap = fragmented()
    out = decide(
        ClusterState(snap, migrations_in_flight=10), PlannerConfig(), Limits(migrations_in_flight=10)
    )
    assert not out.of(Migrate) and out.deferred_migrations == 1
    assert not decide(ClusterState(snap, paused=True), PlannerConfig(), Limits()).of(StartDrain)
    backing_off = decide(ClusterState(snap, backing_off=frozenset({"c"})), PlannerConfig(), Limits())
    assert "c" not in {s.node for s in backing_off.of(StartDrain)}
