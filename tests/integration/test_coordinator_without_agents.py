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
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
import yaml
from aiohttp import web
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
from services.coordinator.kube import LEASE_HOLDER, LEASE_UNTIL
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


class FaultyApi:
    """A pass-through proxy in front of the API emulator that can refuse every write (503),
    as an API server behind a broken load balancer would, while reads and watches go on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.refuse_writes = threading.Event()
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> FaultyApi:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=10)
        asyncio.run_coroutine_threadsafe(self._session.close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> str:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        # Watches stream through it until their clients go: do not wait long for them.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.method in ("PATCH", "PUT", "POST", "DELETE") and self.refuse_writes.is_set():
            self.refused += 1
            return web.json_response({"kind": "Status", "code": 503, "message": "unavailable"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": upstream.content_type}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


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
                with contextlib.suppress(TimeoutError):  # nats-py raises both kinds
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

    def start(
        self, name: str, *, kubeconfig: Path | None = None, env: dict[str, str] | None = None
    ) -> AgentProcess:
        env = env or {}
        built = pex_dir()
        proc = AgentProcess(
            "coordinator",
            "-",
            pex=built / "clm-coordinator.pex" if built else None,
            log_path=self.tmp / f"{name}.log",
            env={
                **env,
                "CLM_NATS_URL": self.nats.url,
                "CLM_KUBECONFIG": str(kubeconfig or self.tmp / "kubeconfig"),
                "CLM_REPLICA_ID": name,
                "CLM_RESYNC_SECONDS": env.get("CLM_RESYNC_SECONDS", "300"),
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

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL, name
        )
        return obj.get("status") or {}

    def lease(self, name: str) -> tuple[str | None, float]:
        obj = self.custom.get_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL, name
        )
        annotations = obj["metadata"].get("annotations") or {}
        return annotations.get(LEASE_HOLDER), float(annotations.get(LEASE_UNTIL, 0))

    def phases(self) -> dict[str, str]:
        items = self.custom.list_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL
        )["items"]
        return {m["metadata"]["name"]: (m.get("status") or {}).get("phase", "") for m in items}


@pytest.fixture
def emulator_url() -> Iterator[str]:
    with running_emulator() as emulator:
        yield emulator.url


@pytest.fixture
def replicas(nats_server: NatsServer, emulator_url: str, tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(nats_server, emulator_url, tmp_path)
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


def test_a_replica_that_cannot_renew_its_lease_stops_before_another_takes_over(
    replicas: Replicas, emulator_url: str
) -> None:
    for node in ("n1", "n2"):
        replicas.core.create_node(builders.node(node))
    replicas.core.create_namespaced_pod(
        NS, {"metadata": {"name": "held"}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}
    )
    replicas.core.patch_namespaced_pod_status(
        "held", NS, {"status": {"phase": "Running", "podIP": "10.9.1.1"}}
    )
    lease = {"CLM_LEASE_SECONDS": "3", "CLM_RESYNC_SECONDS": "0.5"}
    with FaultyApi(emulator_url) as api:
        kubeconfig = replicas.tmp / "kubeconfig-a"
        kubeconfig.write_text(kubeconfig_text(api.url))
        a = replicas.start("coordinator-a", kubeconfig=kubeconfig, env=lease)
        for node in ("n1", "n2"):  # once the streams exist (A declared them)
            caps = NodeCapabilities(node=node, agent_version="test", arch="amd64", probe_ok=True)
            asyncio.run(publish(replicas.nats.url, caps))
        agents = HeldAgents(replicas.nats.url).__enter__()
        create_migration(
            replicas.custom, NS, "held", {"podName": "held", "destinationNode": "n2", "fallback": "none"}
        )
        wait_for(lambda: replicas.status("held").get("driver") == "coordinator-a", "A drives the migration")
        b = replicas.start("coordinator-b", env=lease)
        api.refuse_writes.set()  # A can no longer renew (nor write anything)
        stopped_at = wait_for(
            lambda: metric(a, "clm_coordinator_runs_stopped_total ") == 1 and time.time(), "A stops"
        )
        taken_at = wait_for(
            lambda: replicas.lease("held")[0] == "coordinator-b" and time.time(),
            "B takes the lease over",
            timeout=15,
        )
        # A stopped while its lease still held (a third of it before it expired); B only
        # took over after it had expired: never two drivers at once.
        assert stopped_at < taken_at
        assert metric(b, "clm_coordinator_runs_stopped_total ") == 0
        agents.released.set()
        wait_all_failed(replicas, ["held"], within=30)
        agents.__exit__()
        assert failed_count(a) == 0 and failed_count(b) == 1  # B ended it, A never did
        a.stop()  # its watch streams through the proxy
    status = replicas.status("held")
    assert status["driver"] == "coordinator-b" and "refused by the test's agent" in status["failureReason"]
    assert api.refused > 0
    msgs = asyncio.run(
        fetch_from_stream(replicas.nats.url, subjects.ALL_MIGRATION_EVENTS, streams.EVENTS.name, 5, 3)
    )
    kinds = [MIGRATION_EVENT_ADAPTER.validate_json(m.data).kind for m in msgs]
    assert kinds == ["PreDumpSkipped", "MigrationFailed"]  # each once, whoever drove


def test_the_evict_fallback_waits_for_the_disruption_budget(replicas: Replicas) -> None:
    a = replicas.start("coordinator-a")
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
    wait_for(lambda: metric(a, "clm_coordinator_evictions_refused_total ") >= 1, "an eviction refused (429)")
    assert replicas.core.list_namespaced_pod(NS).items[0].metadata.name == "solo"
    assert replicas.phases()["solo-move"] == "RollingBack"  # still retrying the eviction

    policy.patch_namespaced_pod_disruption_budget("solo", NS, {"spec": {"minAvailable": 0}})
    wait_all_failed(replicas, ["solo-move"], within=30)
    assert replicas.core.list_namespaced_pod(NS).items == []
    status = replicas.custom.get_namespaced_custom_object(
        protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL, "solo-move"
    )["status"]
    assert "fallback evict: evicted" in status["message"], status
