"""The evictor-planner process against the Kubernetes API emulator and a real NATS server.

A fragmented cluster: nodes a and b well used, node c nearly empty. The planner must
cordon c (and only c), create a Migration for each pod the label matrix live-migrates
(with the plan's destination) and evict the others through the Eviction API, in default
and in aggressive mode; when c is empty, publish NodeDrained. A spot-interruption taint
gets a node's pods migrated first. Dry-run changes nothing and publishes the plan. With
two replicas one is active, and the other takes over when it dies.

The coordinator is not running here (it is tested with real agents in
test_coordinator.py): a stand-in marks Migrations Finished and removes the moved pod,
which is what the coordinator does at the end of a successful migration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from kubernetes import client

from clm.contracts import DrainPlanned, NodeDrained, decode, protocol, streams, subjects
from clm.policy import names
from tests.integration.support import fetch_from_stream, http_get, pex_dir
from tests.integration.support import wait_for as _wait_for
from tests.kit import builders as b
from tests.kit.agents import AgentProcess
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread, api_client


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    return _wait_for(check, what, timeout, every=0.1)


CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")
NS = "shop"
GROUP = (protocol.GROUP, protocol.VERSION)
ELIGIBLE = {names.MIGRATION_ENABLED: "true"}


@dataclass
class Cluster:
    nats: NatsServer
    tmp: Path
    core: client.CoreV1Api
    apps: client.AppsV1Api
    custom: client.CustomObjectsApi
    procs: list[AgentProcess]

    def planner(self, tag: str = "", **env: str) -> AgentProcess:
        built = pex_dir()
        proc = AgentProcess(
            "evictor-planner",
            "-",
            pex=built / "clm-evictor-planner.pex" if built else None,
            log_path=self.tmp / f"planner{tag}.log",
            env={
                "CLM_NATS_URL": self.nats.url,
                "CLM_KUBECONFIG": str(self.tmp / "kubeconfig"),
                "CLM_INTERVAL_SECONDS": "1",
                "CLM_SETTLE_SECONDS": "0.2",
                "CLM_LEASE_SECONDS": "3",
                **env,
            },
        ).start()
        self.procs.append(proc)
        return proc.wait_ready()

    def deployment(self, name: str, replicas: int) -> None:
        selector = {"matchLabels": {"app": name}}
        template = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c"}]}}
        self.apps.create_namespaced_deployment(
            NS,
            {
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "selector": selector, "template": template},
            },
        )
        rs = {
            "metadata": {"name": f"{name}-rs", "ownerReferences": [b.owner("Deployment", name)]},
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
        self.apps.create_namespaced_replica_set(NS, rs)

    def pod(self, name: str, node: str, mem_gib: float, labels: dict[str, str], owner: str | None) -> None:
        meta: dict[str, Any] = {"name": name, "labels": {"app": owner or name, **labels}}
        if owner == "node-agent":
            meta["ownerReferences"] = [b.owner("DaemonSet", owner)]
        elif owner:
            meta["ownerReferences"] = [b.owner("ReplicaSet", f"{owner}-rs")]
        container = {
            "name": "c",
            "image": "app:1",
            "resources": {"requests": {"cpu": "200m", "memory": f"{int(mem_gib * 1024)}Mi"}},
        }
        self.core.create_namespaced_pod(
            NS, {"metadata": meta, "spec": {"nodeName": node, "containers": [container]}}
        )
        self.core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running"}})

    def fragmented(self) -> None:
        for name in ("a", "b", "c"):
            node = b.node(name, cpu="4", memory="16Gi")
            self.core.create_node(node)
            self.core.patch_node_status(
                name, {"status": node["status"]}, _preload_content=False
            )  # as a kubelet reports it
        self.deployment("big", 3)
        self.deployment("web", 3)
        self.deployment("plain", 3)
        self.pod("big-1", "a", 8, ELIGIBLE, "big")
        self.pod("big-2", "b", 9, ELIGIBLE, "big")
        self.pod("agent-c", "c", 0.1, {}, "node-agent")
        self.pod("web-1", "c", 1, ELIGIBLE, "web")  # live-migrate (3 replicas)
        self.pod("plain-1", "c", 1, {}, "plain")  # not labeled: evict
        self.pod("solo", "c", 1, ELIGIBLE, None)  # bare pod, one replica: evict in default mode

    def node(self, name: str) -> dict[str, Any]:
        return json.loads(self.core.read_node(name, _preload_content=False).data)

    def migrations(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(*GROUP, NS, "migrations")["items"]

    def pods(self) -> set[str]:
        return {p.metadata.name for p in self.core.list_namespaced_pod(NS).items}

    def finish_migrations(self) -> None:
        """The stand-in coordinator: each pending Migration ends well, its pod moved away."""
        for m in self.migrations():
            if (m.get("status") or {}).get("phase"):
                continue
            self.core.delete_namespaced_pod(m["spec"]["podName"], NS)
            self.custom.patch_namespaced_custom_object_status(
                *GROUP,
                NS,
                "migrations",
                m["metadata"]["name"],
                {"status": {"phase": "Finished", "completionTime": "2026-11-24T00:00:00Z"}},
            )


@pytest.fixture
def cluster(nats_server: NatsServer, tmp_path: Path) -> Iterator[Cluster]:
    emulator = EmulatorThread().start()
    (tmp_path / "kubeconfig").write_text(kubeconfig_text(emulator.url))
    api = api_client(emulator.url)
    client.ApiextensionsV1Api(api).create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    c = Cluster(nats_server, tmp_path, core, client.AppsV1Api(api), client.CustomObjectsApi(api), [])
    try:
        yield c
    finally:
        for proc in c.procs:
            proc.stop()
        emulator.stop()


def plans(url: str, count: int = 200) -> list[DrainPlanned]:
    msgs = asyncio.run(fetch_from_stream(url, subjects.PLANNER_PLAN, streams.EVENTS.name, count, 2))
    return [decode(m.data, DrainPlanned) for m in msgs]


def test_default_mode_drains_the_emptiest_node_per_the_label_matrix(cluster: Cluster) -> None:
    cluster.fragmented()
    cluster.planner()
    [m] = wait_for(cluster.migrations, "a Migration")
    assert m["spec"]["podName"] == "web-1"
    assert m["spec"]["destinationNode"] in ("a", "b")
    assert m["spec"]["fallback"] == "evict"
    node_c = cluster.node("c")
    assert node_c["spec"].get("unschedulable") is True
    assert "live.cast.ai/draining" in node_c["metadata"]["annotations"]
    assert not cluster.node("a")["spec"].get("unschedulable") and not cluster.node("b")["spec"].get(
        "unschedulable"
    )
    wait_for(lambda: not ({"plain-1", "solo"} & cluster.pods()), "plain-1 and solo evicted")
    assert {"web-1", "agent-c", "big-1", "big-2"} <= cluster.pods()

    cluster.finish_migrations()
    drained = wait_for(
        lambda: asyncio.run(
            fetch_from_stream(cluster.nats.url, subjects.node_drained("c"), streams.EVENTS.name, 1, 1)
        ),
        "NodeDrained for c",
    )
    event = decode(drained[0].data, NodeDrained)
    assert (event.pods_migrated, event.pods_evicted, event.action) == (1, 2, "cordon-only")
    annotations = cluster.node("c")["metadata"]["annotations"]
    assert "live.cast.ai/drained" in annotations and "live.cast.ai/draining" not in annotations
    assert len(cluster.migrations()) == 1  # nothing else was moved
    more_cycles(cluster, 2)
    assert not cluster.node("a")["spec"].get("unschedulable")  # one drain was enough


def test_aggressive_mode_migrates_the_single_replica_pod(cluster: Cluster) -> None:
    cluster.fragmented()
    cluster.planner(CLM_MODE="aggressive")
    wait_for(lambda: len(cluster.migrations()) == 2, "two Migrations")
    assert sorted(m["spec"]["podName"] for m in cluster.migrations()) == ["solo", "web-1"]
    wait_for(lambda: "plain-1" not in cluster.pods(), "plain-1 evicted")
    assert "solo" in cluster.pods()


def test_a_spot_interruption_taint_moves_the_pods_off_first(cluster: Cluster) -> None:
    cluster.fragmented()
    # Bin-packing may drain one node at a time; c takes that slot right away.
    planner = cluster.planner()
    wait_for(lambda: cluster.node("c")["spec"].get("unschedulable"), "c draining")
    cluster.core.patch_node(
        "a",
        {
            "spec": {
                "taints": [
                    {"key": "aws-node-termination-handler/spot-itn", "value": "x", "effect": "NoSchedule"}
                ]
            }
        },
        _preload_content=False,
    )
    wait_for(
        lambda: any(m["spec"]["podName"] == "big-1" for m in cluster.migrations()), "big-1 migrating off a"
    )
    m = next(m for m in cluster.migrations() if m["spec"]["podName"] == "big-1")
    assert "destinationNode" not in m["spec"]  # the coordinator picks it
    assert cluster.node("a")["spec"].get("unschedulable") is True
    assert http_get(planner.port, "/readyz")[0] == 200


def test_dry_run_only_publishes_and_prints_the_plan(cluster: Cluster) -> None:
    cluster.fragmented()
    planner = cluster.planner(CLM_DRY_RUN="true")
    found = wait_for(lambda: [p for p in plans(cluster.nats.url) if p.new_drains], "a plan")
    plan = found[0]
    assert plan.dry_run and [d.node for d in plan.new_drains] == ["c"]
    moves = {(m.pod, m.action) for m in plan.new_drains[0].moves}
    assert moves == {("web-1", "live-migrate"), ("plain-1", "evict"), ("solo", "evict")}
    more_cycles(cluster, 2)  # dry runs publish a plan each cycle and do nothing else
    assert cluster.migrations() == []
    assert not cluster.node("c")["spec"].get("unschedulable")
    assert {"plain-1", "solo"} <= cluster.pods()
    planner.stop()
    assert "[dry-run] drain c" in (cluster.tmp / "planner.log").read_text()


def plan_count(url: str) -> int:
    """How many plans have been published (one per planner cycle)."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(
                streams.EVENTS.name, subjects_filter=subjects.PLANNER_PLAN
            )
            return int((info.state.subjects or {}).get(subjects.PLANNER_PLAN, 0))
        finally:
            await nc.close()

    return asyncio.run(count())


def more_cycles(cluster: Cluster, count: int) -> None:
    """Wait until the planner has run `count` more cycles (each publishes its plan)."""
    before = plan_count(cluster.nats.url)
    wait_for(lambda: plan_count(cluster.nats.url) >= before + count, f"{count} more planner cycles")


def leader(proc: AgentProcess) -> bool:
    status, text = http_get(proc.port, "/metrics")
    return status == 200 and "clm_planner_leader 1.0" in text


def test_one_active_replica_and_a_takeover(cluster: Cluster) -> None:
    cluster.fragmented()
    first = cluster.planner("-1", CLM_DRY_RUN="true")
    second = cluster.planner("-2", CLM_DRY_RUN="true")
    wait_for(lambda: leader(first) or leader(second), "a leader")
    more_cycles(cluster, 3)  # the standby has tried for the lease again meanwhile (every lease/3)
    assert [leader(first), leader(second)].count(True) == 1
    active, standby = (first, second) if leader(first) else (second, first)
    active.kill()
    wait_for(lambda: leader(standby), "the standby taking over", timeout=15)
    before = len(plans(cluster.nats.url))
    wait_for(lambda: len(plans(cluster.nats.url)) > before, "plans from the new leader")
