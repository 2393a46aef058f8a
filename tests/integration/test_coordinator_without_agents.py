"""Coordinator processes against the API emulator and a real NATS server, no node agents.

Two replicas, with the full pass (resync) set far apart so that only the watch can explain
a prompt reaction:

- both replicas see each new Migration at once through their watch, both try to drive
  it, and exactly one does: every Migration ends with exactly one outcome event on NATS
  and one Kubernetes Event (these name pods that do not exist, so each one fails at its
  first step: what is tested is who drives it, and how fast);
- a Migration created later is still picked up within seconds, not at the next pass;
- a burst larger than one replica's cap is spread over both: the test answers for the
  nodes' agents and holds every answer until both replicas drive as many as their cap
  allows, so neither can take the whole burst however fast it is.

The evict fallback against a real PodDisruptionBudget: a migration that cannot happen (no
agent answers for the nodes) falls back to eviction through the Eviction API; while the
budget allows no disruption the API says 429 and the pod stays; once the budget allows it,
the retried eviction goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml
from kubernetes import client
from nats.aio.msg import Msg

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    Message,
    NetworkCommand,
    NetworkStep,
    NodeCapabilities,
    decode,
    encode,
    protocol,
    step_result_for,
    streams,
    subjects,
)
from clm.contracts.events import MIGRATION_EVENT_ADAPTER
from tests.integration.support import create_migration, fetch_from_stream, http_get, pex_dir, wait_for
from tests.kit import builders
from tests.kit.agents import AgentProcess
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import api_client, running_emulator

CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")
NS = "replicas"
COUNT = 12
PER_REPLICA = 4


def metric(proc: AgentProcess, prefix: str) -> float:
    _, text = http_get(proc.port, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def failed_count(proc: AgentProcess) -> float:
    return metric(proc, 'clm_coordinator_migrations_total{outcome="failed"}')


def running(proc: AgentProcess) -> float:
    return metric(proc, "clm_coordinator_migrations_running ")


class HeldAgents:
    """Answers every node command on the stream, as the nodes' agents would, but only once
    released: network prepare is then refused (the migration rolls back) and every other step
    (the rollback's) is done."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.released = threading.Event()
        self.stopped = threading.Event()
        self.answered = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> HeldAgents:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"{subjects.COMMANDS_PREFIX}.node.>", durable="held-agents", stream=streams.COMMANDS.name
        )
        held: list[Msg] = []
        try:
            while not self.stopped.is_set():
                with contextlib.suppress(nats.errors.TimeoutError):
                    held += await sub.fetch(batch=16, timeout=0.2)
                if not self.released.is_set():
                    continue
                for msg in held:
                    command = decode(msg.data, [CheckpointCommand, NetworkCommand])
                    assert isinstance(command, CheckpointCommand | NetworkCommand)
                    agent = (
                        AgentKind.CHECKPOINT if isinstance(command, CheckpointCommand) else AgentKind.NETWORK
                    )
                    refused = command.step == NetworkStep.PREPARE
                    result = step_result_for(
                        command,
                        agent=agent,
                        ok=not refused,
                        duration_seconds=0.001,
                        error="refused by the test's agent" if refused else None,
                    )
                    await js.publish(
                        result.subject(), encode(result), headers={"Nats-Msg-Id": result.message_id}
                    )
                    await msg.ack()
                    self.answered += 1
                held = []
        finally:
            await nc.close()


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
                "CLM_MAX_PER_SOURCE_NODE": str(COUNT * 2),
                "CLM_MAX_PER_DESTINATION_NODE": str(COUNT * 2),
                "CLM_MAX_PER_REPLICA": str(PER_REPLICA),
            },
        ).start()
        self.procs.append(proc)
        return proc.wait_ready()

    def migrate(self, name: str) -> None:
        create_migration(
            self.custom, NS, name, {"podName": f"ghost-{name}", "destinationNode": "n2", "fallback": "none"}
        )

    def phases(self) -> dict[str, str]:
        items = self.custom.list_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL
        )["items"]
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
    # Whichever replica wins a migration's lease drives it: together exactly once each.
    assert failed_count(a) + failed_count(b) == COUNT

    # Later, with both idle: a new Migration is seen at once, not at the next full pass.
    replicas.migrate("late")
    assert wait_all_failed(replicas, ["late"], within=10) < 5


def test_a_burst_is_spread_over_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.start("coordinator-a"), replicas.start("coordinator-b")
    for node in ("n1", "n2"):
        replicas.core.create_node(builders.node(node))
        caps = NodeCapabilities(node=node, agent_version="test", arch="amd64", probe_ok=True)
        asyncio.run(publish(replicas.nats.url, caps))
    names = [f"b{i:02d}" for i in range(COUNT)]
    for i, name in enumerate(names):
        pod = f"pod-{name}"
        replicas.core.create_namespaced_pod(
            NS, {"metadata": {"name": pod}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}
        )
        ip = f"10.9.0.{10 + i}"
        replicas.core.patch_namespaced_pod_status(pod, NS, {"status": {"phase": "Running", "podIP": ip}})
    with HeldAgents(replicas.nats.url) as agents:
        for name in names:
            create_migration(
                replicas.custom,
                NS,
                name,
                {"podName": f"pod-{name}", "destinationNode": "n2", "fallback": "none"},
            )
        # Nothing is answered yet: each replica takes on its cap and no more, so the burst
        # (three times one cap) cannot be taken by one alone.
        wait_for(
            lambda: running(a) == PER_REPLICA and running(b) == PER_REPLICA, "both replicas at their cap"
        )
        assert running(a) + running(b) == 2 * PER_REPLICA
        agents.released.set()
        wait_all_failed(replicas, names, within=60)
    assert failed_count(a) >= PER_REPLICA and failed_count(b) >= PER_REPLICA
    assert failed_count(a) + failed_count(b) == COUNT  # each exactly once
    msgs = asyncio.run(
        fetch_from_stream(replicas.nats.url, subjects.ALL_MIGRATION_EVENTS, streams.EVENTS.name, COUNT * 3, 3)
    )
    events = [MIGRATION_EVENT_ADAPTER.validate_json(m.data) for m in msgs]
    assert all(
        [e.kind for e in events if e.migration == n] == ["PreDumpSkipped", "MigrationFailed"] for n in names
    )


async def publish(url: str, message: Message) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(message.subject(), encode(message))
    finally:
        await nc.close()


def test_the_evict_fallback_waits_for_the_disruption_budget(replicas: Replicas) -> None:
    replicas.start("coordinator-a")
    for node in ("n1", "n2"):
        replicas.core.create_node(builders.node(node))
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
        protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL, "solo-move"
    )["status"]
    assert "fallback evict: evicted" in status["message"], status
