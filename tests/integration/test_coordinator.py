"""The coordinator end to end: a Migration object in the Kubernetes API emulator, the
coordinator process, a real NATS server, and the real node agents (processes) moving a real
runc container between two nodes of a test segment.

- success: exactly the documented event sequence on NATS and as Kubernetes Events on the
  Migration, the clone pod (`-clone-1`, `cast.ai/restore`, on the destination, Running with
  the pod's IP), the source pod deleted, the client's connection alive throughout;
- restore failure: rollback, MigrationFailed with the stage and the fallback, the pod still
  serving on node A, the clone pod gone;
- a RequestMigration command on NATS becomes a Migration;
- an invalid Migration is refused by the API with the field named.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts import RequestMigration, encode, protocol, streams, subjects
from clm.contracts.events import MIGRATION_EVENT_ADAPTER
from clm.runtime.podnet import pod_netns_name
from tests.integration.support import create_migration, fetch_from_stream, http_get, pex_dir
from tests.kit.agents import AgentProcess, NodeAgents, agent_tls_dir
from tests.kit.nats_server import NatsServer
from tests.kit.podlab import CountingClient, LabPod, expected_hash, remove_pod, running_on, start_pod
from tests.kit.segment import POD_IP, Segment
from tools.clm import migrate
from tools.clm.watch import watch_migrations
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread, api_client, running_emulator

MISSING = [t for t in ("runc", "criu", "nsenter") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING),
    reason=f"needs root and runc, criu (missing: {MISSING or 'root'}); run tools/setup/install-system-deps",
)
CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")
STATE_MIB = 64
NS = "games"


class Cluster:
    def __init__(
        self, segment: Segment, nats_server: NatsServer, emulator: EmulatorThread, tmp: Path
    ) -> None:
        self.segment, self.nats, self.tmp = segment, nats_server, tmp
        self.api = api_client(emulator.url)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        client.ApiextensionsV1Api(self.api).create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
        self.core.create_namespace({"metadata": {"name": NS}})
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(kubeconfig_text(emulator.url))
        tls = agent_tls_dir(tmp / "agent-tls")
        self.images = Path("/dev/shm") / f"clm-coord-{segment.suffix}"
        self.nodes = {
            key: NodeAgents(
                node=f"n{key}{segment.suffix}",
                node_netns=segment.nodes[key].name,
                workdir=tmp / key,
                nats_url=nats_server.url,
                tls_dir=tls,
                image_dir=self.images,
                pex_dir=pex_dir(),
            )
            for key in ("a", "b")
        }
        self.coordinator: AgentProcess | None = None
        self.pod: LabPod | None = None

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()
        self.start_coordinator()
        for node in self.nodes.values():
            node.wait_ready()
        assert self.coordinator is not None
        self.coordinator.wait_ready()

    def start_coordinator(self) -> AgentProcess:
        built = pex_dir()
        self.coordinator = AgentProcess(
            "coordinator",
            "-",
            pex=built / "clm-coordinator.pex" if built else None,
            log_path=self.tmp / "coordinator.log",
            env={
                "CLM_NATS_URL": self.nats.url,
                "CLM_KUBECONFIG": str(self.kubeconfig),
                "CLM_RESYNC_SECONDS": "0.5",
                "CLM_STEP_TIMEOUT_SECONDS": "60",
                "CLM_LEASE_SECONDS": "6",
            },
        ).start()
        return self.coordinator

    def stop(self) -> None:
        if self.pod is not None:
            remove_pod(self.pod, nodes={n.node: (n.node_netns, n.runc_root) for n in self.nodes.values()})
        if self.coordinator is not None:
            self.coordinator.stop()
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.images, ignore_errors=True)

    def run_pod(self, name: str = "mc-0") -> LabPod:
        """The pod object (bound to node A, with its IP) and its real container on node A."""
        a = self.nodes["a"]
        created = self.core.create_namespaced_pod(
            NS,
            {
                "metadata": {"name": name, "namespace": NS, "labels": {"app": "mc"}},
                "spec": {"nodeName": a.node, "containers": [{"name": "server", "image": "host"}]},
            },
        )
        self.core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running", "podIP": POD_IP}})
        self.pod = LabPod(namespace=NS, name=name, uid=created.metadata.uid, ip=POD_IP, state_mib=STATE_MIB)
        start_pod(
            self.pod, node=a.node, node_netns=a.node_netns, runc_root=a.runc_root, workdir=self.tmp / "pod"
        )
        return self.pod

    def migrate(self, name: str, pod: str, to: str = "b", **spec: Any) -> None:
        create_migration(
            self.custom, NS, name, {"podName": pod, "destinationNode": self.nodes[to].node, **spec}
        )

    def migration(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL, name
        )

    async def wait_phase(
        self, name: str, phases: tuple[str, ...], timeout: float = 120, poll: float = 0.2
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.migration(name).get("status") or {}
            if status.get("phase") in phases:
                return status
            await asyncio.sleep(poll)
        log = (self.tmp / "coordinator.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"migration {name} never reached {phases}: {status}\n{log}")

    def k8s_event_reasons(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(NS).items
        mine = [e for e in events if e.involved_object.name == name and e.involved_object.kind == "Migration"]
        return [e.reason for e in sorted(mine, key=lambda e: e.metadata.name)]

    async def nats_event_reasons(self, name: str, expected: int) -> list[str]:
        msgs = await fetch_from_stream(
            self.nats.url,
            subjects.join(subjects.EVENTS_PREFIX, "migration", NS, name, ">"),
            streams.EVENTS.name,
            expected,
            timeout=5,
        )
        events = [MIGRATION_EVENT_ADAPTER.validate_json(m.data) for m in msgs]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        return [e.kind for e in events]


@pytest.fixture
def cluster(segment: Segment, nats_server: NatsServer, tmp_path: Path) -> Iterator[Cluster]:
    with running_emulator() as emulator:
        cluster = Cluster(segment, nats_server, emulator, tmp_path)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


async def test_a_migration_object_moves_the_pod_with_the_documented_events(cluster: Cluster) -> None:
    pod = cluster.run_pod()
    client_ = CountingClient(cluster.segment.nodes["client"].name, pod.ip, cluster.tmp / "client")
    try:
        await asyncio.to_thread(client_.wait_answers)
        cluster.migrate("move-1", pod.name, fallback="evict")
        # `clm watch -n NS --until-done` beside it, as a person would follow the move.
        watched = io.StringIO()
        watching = asyncio.ensure_future(
            asyncio.to_thread(watch_migrations, cluster.api, NS, until_done=True, timeout=120, out=watched)
        )
        status = await cluster.wait_phase("move-1", ("Finished", "Failed"))
        assert await watching == 0, watched.getvalue()
        await asyncio.to_thread(client_.wait_answers)
        assert status["phase"] == "Finished", status
        expected = ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]
        assert await cluster.nats_event_reasons("move-1", len(expected)) == expected
        assert cluster.k8s_event_reasons("move-1") == expected
        assert status["clonePod"] == "mc-0-clone-1" and status["committed"] is True
        assert status["freezeSeconds"] > 0 and status["bytesTransferred"] > STATE_MIB * 2**20
        # The source agent's progress reached the status over NATS while the images moved.
        progress = status["progress"]
        assert progress["percent"] == 100.0 and progress["bytesMoved"] > 0, progress
        lines = [line for line in watched.getvalue().splitlines() if " move-1 mc-0 " in line]
        percents = [float(m.group(1)) for line in lines if (m := re.search(r" (\d+)% ", line))]
        assert percents == sorted(percents) and percents[-1] == 100, lines
        assert " Finished " in lines[-1] and "Dumping" in watched.getvalue(), lines
        assert cluster.coordinator is not None
        _, metrics = http_get(cluster.coordinator.port, "/metrics")
        assert 'clm_migration_freeze_seconds_count{strategy="stop-and-copy"} 1.0' in metrics
        assert 'clm_migration_duration_seconds_count{outcome="finished"} 1.0' in metrics
        clone = cluster.core.read_namespaced_pod("mc-0-clone-1", NS)
        assert clone.spec.node_name == cluster.nodes["b"].node
        assert clone.metadata.annotations["cast.ai/restore"] == f"{NS}/mc-0"
        assert clone.status.phase == "Running" and clone.status.pod_ip == POD_IP
        with pytest.raises(ApiException) as gone:
            cluster.core.read_namespaced_pod("mc-0", NS)
        assert gone.value.status == 404
        assert running_on(pod, cluster.nodes["b"].runc_root)
        assert not running_on(pod, cluster.nodes["a"].runc_root)

        # The clone moves on: its containers and network still carry the first pod's UID.
        assert clone.metadata.annotations["live.cast.ai/runtime-pod-uid"] == pod.uid != clone.metadata.uid
        cluster.migrate("move-back", "mc-0-clone-1", to="a", fallback="evict")
        back = await cluster.wait_phase("move-back", ("Finished", "Failed"))
        assert back["phase"] == "Finished", back
        assert back["clonePod"] == "mc-0-clone-2" and back["sourceNode"] == cluster.nodes["b"].node
        assert cluster.core.read_namespaced_pod("mc-0-clone-2", NS).spec.node_name == cluster.nodes["a"].node
        assert running_on(pod, cluster.nodes["a"].runc_root)
        assert not running_on(pod, cluster.nodes["b"].runc_root)
        await asyncio.to_thread(client_.wait_answers)
        result = client_.finish()
    finally:
        client_.kill()
    assert result["error"] is None and result["in_order"], result
    assert result["hash"] == expected_hash(STATE_MIB, result["answers"])


async def test_a_failed_restore_rolls_back_and_applies_the_fallback(cluster: Cluster) -> None:
    pod = cluster.run_pod()
    b = cluster.nodes["b"]
    # Take the pod's port in B's pod namespace once it is prepared: the restore really fails.
    blocker = None

    async def block_when_prepared() -> None:
        nonlocal blocker
        netns = Path("/var/run/netns") / pod_netns_name(b.node, pod.uid)
        while not netns.exists():
            await asyncio.sleep(0.01)
        blocker = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--net={netns}",
            "python3",
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); time.sleep(600)",
        )

    watcher = asyncio.create_task(block_when_prepared())
    client_ = CountingClient(cluster.segment.nodes["client"].name, pod.ip, cluster.tmp / "client")
    try:
        cluster.migrate("move-2", pod.name, fallback="restore-on-source")
        status = await cluster.wait_phase("move-2", ("Finished", "Failed"))
        result = client_.finish()
    finally:
        client_.kill()
        watcher.cancel()
        if blocker is not None:
            blocker.kill()
    assert status["phase"] == "Failed" and status["failedStage"] == "restore", status
    expected = ["PreDumpSkipped", "PodCreateFinished", "MigrationFailed"]
    assert await cluster.nats_event_reasons("move-2", len(expected)) == expected
    assert cluster.k8s_event_reasons("move-2") == expected
    assert "restore-on-source" in status["message"]
    assert running_on(pod, cluster.nodes["a"].runc_root)
    names = {p.metadata.name for p in cluster.core.list_namespaced_pod(NS).items}
    assert names == {"mc-0"}  # the clone pod was removed; the source pod stays
    assert result["error"] is None and result["in_order"], result


async def test_a_request_on_nats_becomes_a_migration(cluster: Cluster) -> None:
    request = RequestMigration(
        namespace=NS, pod="lobby-0", destination_node=cluster.nodes["b"].node, requested_by="test"
    )
    nc = await nats.connect(cluster.nats.url)
    try:
        await nc.jetstream().publish(
            request.subject(), encode(request), headers={"Nats-Msg-Id": request.message_id}
        )
    finally:
        await nc.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        items = cluster.custom.list_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, NS, protocol.PLURAL
        )["items"]
        if items:
            break
        await asyncio.sleep(0.2)
    assert [m["spec"]["podName"] for m in items] == ["lobby-0"]
    # The pod does not exist: the migration fails with that reason, nothing else happens.
    status = await cluster.wait_phase(items[0]["metadata"]["name"], ("Failed",))
    assert "does not exist" in status["failureReason"]


def test_an_invalid_migration_is_refused_with_the_field_named(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as refused:
        cluster.custom.create_namespaced_custom_object(
            protocol.GROUP,
            protocol.VERSION,
            NS,
            protocol.PLURAL,
            {
                "apiVersion": protocol.API_VERSION,
                "kind": "Migration",
                "metadata": {"name": "bad"},
                "spec": {"podName": "mc-0", "strategy": "teleport"},
            },
        )
    assert refused.value.status == 422
    assert "spec.strategy" in refused.value.body


async def test_a_migration_deleted_before_the_commit_point_is_cancelled_and_the_pod_stays(
    cluster: Cluster,
) -> None:
    pod = cluster.run_pod()
    client_ = CountingClient(cluster.segment.nodes["client"].name, pod.ip, cluster.tmp / "client")
    try:
        await asyncio.to_thread(client_.wait_answers)
        cluster.migrate("move-c", pod.name, fallback="evict")
        await cluster.wait_phase("move-c", ("Dumping",), poll=0.01)
        out = io.StringIO()
        # What `clm migrate --cancel NS/mc-0` does: delete the Migration, follow it to its end.
        code = await asyncio.to_thread(
            migrate.cancel, cluster.api, NS, pod.name, wait=True, timeout=120, out=out
        )
        assert code == 0 and "cancelled: mc-0 runs on" in out.getvalue(), out.getvalue()
        # The finalizer held the object until the rollback was done, then let it go.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                cluster.migration("move-c")
            except ApiException as exc:
                assert exc.status == 404
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the deleted Migration stayed: {cluster.migration('move-c')}")
        await asyncio.to_thread(client_.wait_answers)
        result = client_.finish()
    finally:
        client_.kill()
    assert result["error"] is None and result["in_order"], result
    assert running_on(pod, cluster.nodes["a"].runc_root)
    assert not running_on(pod, cluster.nodes["b"].runc_root)
    # No fallback: the source pod object stays, no clone is left.
    assert {p.metadata.name for p in cluster.core.list_namespaced_pod(NS).items} == {"mc-0"}
    assert cluster.k8s_event_reasons("move-c")[-1] == "MigrationFailed"
    leftovers = [p for p in cluster.images.rglob("*") if p.is_file()] if cluster.images.exists() else []
    assert not leftovers, leftovers


@pytest.mark.parametrize("phase", ["Preparing", "Dumping", "Restoring", "Finalizing"])
async def test_a_coordinator_killed_mid_migration_is_resumed_by_its_successor(
    cluster: Cluster, phase: str
) -> None:
    pod = cluster.run_pod()
    cluster.migrate("move-3", pod.name, fallback="restore-on-source")
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        current = (cluster.migration("move-3").get("status") or {}).get("phase")
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        if current == phase:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"never saw phase {phase} (saw {seen})")
    assert cluster.coordinator is not None
    cluster.coordinator.kill()  # SIGKILL, mid-step
    cluster.start_coordinator().wait_ready()  # another replica: takes over once the lease lapses
    status = await cluster.wait_phase("move-3", ("Finished", "Failed"))
    on_a = running_on(pod, cluster.nodes["a"].runc_root)
    on_b = running_on(pod, cluster.nodes["b"].runc_root)
    assert on_a != on_b, f"the workload must run exactly once (A: {on_a}, B: {on_b})"
    if status["phase"] == "Failed":
        assert status.get("failureReason"), status
        assert on_a
    else:
        assert on_b and status["clonePod"] == "mc-0-clone-1"
    keys = status["eventKeys"]
    assert len(keys) == len(set(keys))
    reasons = cluster.k8s_event_reasons("move-3")
    assert len(reasons) == len(keys), (reasons, keys)  # each event recorded once
