"""Coordinator processes against the API emulator and a real NATS server, no node agents.

Two replicas, with the full pass (resync) set far apart so that only the watch can explain
a prompt reaction:

- both replicas see each new Migration at once through their watch, both try to drive
  it, and exactly one does: every Migration ends with exactly one outcome event on NATS
  and one Kubernetes Event; each replica takes on at most its cap at once, so the burst is
  spread over both;
- a Migration created later is still picked up within seconds, not at the next pass.

The Migrations name pods that do not exist, so each one fails at its first step (the
failure path with nothing to roll back): what is tested is who drives it, and how fast.

The evict fallback against a real PodDisruptionBudget: a migration that cannot happen (no
agent answers for the nodes) falls back to eviction through the Eviction API; while the
budget allows no disruption the API says 429 and the pod stays; once the budget allows it,
the retried eviction goes through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from clm.contracts import streams, subjects
from clm.contracts.events import MIGRATION_EVENT_ADAPTER
from tests.integration.support import create_migration, fetch_from_stream, http_get, pex_dir
from tests.kit.agents import AgentProcess
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import api_client, running_emulator

CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")
NS = "replicas"
COUNT = 12


def failed_count(proc: AgentProcess) -> float:
    _, text = http_get(proc.port, "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("clm_coordinator_migrations_total{") and 'outcome="failed"' in line
    )


class Replicas:
    def __init__(self, nats: NatsServer, url: str, tmp: Path) -> None:
        self.nats, self.tmp = nats, tmp
        api = api_client(url)
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        client.ApiextensionsV1Api(api).create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
        self.core.create_namespace({"metadata": {"name": NS}})
        (tmp / "kubeconfig").write_text(kubeconfig_text(url))
        self.procs: list[AgentProcess] = []

    def start(self, name: str) -> AgentProcess:
        built = pex_dir()
        proc = AgentProcess(
            "coordinator",
            "-",
            pex=built / "clm-coordinator.pex" if built else None,
            log_path=self.tmp / f"{name}.log",
            env={
                "CLM_NATS_URL": self.nats.url,
                "CLM_KUBECONFIG": str(self.tmp / "kubeconfig"),
                "CLM_REPLICA_ID": name,
                "CLM_RESYNC_SECONDS": "300",
                "CLM_MAX_IN_CLUSTER": str(COUNT * 2),
                "CLM_MAX_PER_REPLICA": "4",
            },
        ).start()
        self.procs.append(proc)
        return proc.wait_ready()

    def migrate(self, name: str) -> None:
        create_migration(
            self.custom, NS, name, {"podName": f"ghost-{name}", "destinationNode": "n2", "fallback": "none"}
        )

    def phases(self) -> dict[str, str]:
        items = self.custom.list_namespaced_custom_object("live.cast.ai", "v1", NS, "migrations")["items"]
        return {m["metadata"]["name"]: (m.get("status") or {}).get("phase", "") for m in items}


@pytest.fixture
def replicas(nats_server: NatsServer, tmp_path: Path) -> Iterator[Replicas]:
    with running_emulator() as emulator:
        r = Replicas(nats_server, emulator.url, tmp_path)
        try:
            yield r
        finally:
            for proc in r.procs:
                proc.stop()


def wait_all_failed(r: Replicas, names: list[str], within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        phases = r.phases()
        if all(phases.get(n) == "Failed" for n in names):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(
        f"not all Failed within {within}s (the next full pass is minutes away): {r.phases()}"
    )


def test_two_replicas_never_drive_one_migration_twice(replicas: Replicas) -> None:
    a, b = replicas.start("coordinator-a"), replicas.start("coordinator-b")
    names = [f"m{i:02d}" for i in range(COUNT)]
    for name in names:
        replicas.migrate(name)
    wait_all_failed(replicas, names, within=20)

    msgs = asyncio.run(
        fetch_from_stream(replicas.nats.url, subjects.ALL_MIGRATION_EVENTS, streams.EVENTS.name, COUNT * 3, 3)
    )
    events = [MIGRATION_EVENT_ADAPTER.validate_json(m.data) for m in msgs]
    per_migration = {n: [e.kind for e in events if e.migration == n] for n in names}
    assert all(kinds == ["MigrationFailed"] for kinds in per_migration.values()), per_migration
    recorded = [
        e for e in replicas.core.list_namespaced_event(NS).items if e.involved_object.kind == "Migration"
    ]
    assert sorted(e.involved_object.name for e in recorded) == names  # one Kubernetes Event each
    # Whichever replica wins a migration's lease drives it; together exactly once each, and
    # neither takes on more than CLM_MAX_PER_REPLICA at once, so both get some of the burst.
    shares = [failed_count(a), failed_count(b)]
    assert sum(shares) == COUNT and all(n > 0 for n in shares), shares

    # Later, with both idle: a new Migration is seen at once, not at the next full pass.
    replicas.migrate("late")
    assert wait_all_failed(replicas, ["late"], within=10) < 5


def test_the_evict_fallback_waits_for_the_disruption_budget(replicas: Replicas) -> None:
    from tests.kit import builders as b

    replicas.start("coordinator-a")
    for node in ("n1", "n2"):
        replicas.core.create_node(b.node(node))
    replicas.core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "solo", "labels": {"app": "solo"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "game:1"}]},
        },
    )
    replicas.core.patch_namespaced_pod_status(
        "solo", NS, {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    )
    policy = client.PolicyV1Api(replicas.core.api_client)
    policy.create_namespaced_pod_disruption_budget(
        NS,
        {
            "metadata": {"name": "solo"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "solo"}}},
        },
    )
    create_migration(
        replicas.custom, NS, "solo-move", {"podName": "solo", "destinationNode": "n2", "fallback": "evict"}
    )
    # The migration fails (nobody answers for n1), the eviction meets the budget: 429, kept.
    time.sleep(4)
    assert replicas.core.list_namespaced_pod(NS).items[0].metadata.name == "solo"
    assert replicas.phases()["solo-move"] != "Failed"  # still retrying the eviction

    policy.patch_namespaced_pod_disruption_budget("solo", NS, {"spec": {"minAvailable": 0}})
    wait_all_failed(replicas, ["solo-move"], within=30)
    assert replicas.core.list_namespaced_pod(NS).items == []
    status = replicas.custom.get_namespaced_custom_object(
        "live.cast.ai", "v1", NS, "migrations", "solo-move"
    )["status"]
    assert "fallback evict: evicted" in status["message"], status
