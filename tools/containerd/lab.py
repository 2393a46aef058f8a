"""Two Kubernetes-style nodes on containerd 2.1: each a network namespace on a shared segment
with its own containerd (CNI: clm-cni, routed), the clm-restore RuntimeClass handler
installed, both CLM agents as real processes over a real NATS, and a kubelet stand-in that
drives containerd over CRI. A stateful server pod runs on node A; its clone is a pod on B.

The pods are also objects in the Kubernetes API emulator: clm-cni reads there which pod a
clone restores and that pod's IP, as it does from a real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from clm.contracts import MigrationStrategy, PodRef
from clm.policy.naming import clone_spec
from clm.runtime.cri.client import CriClient, CriError, state_name
from tests.kit.agents import NodeAgents, agent_tls_dir
from tests.kit.containerd_images import POD_IMAGE, node_images
from tests.kit.containerd_node import (
    BIN,
    RESTORE_HANDLER,
    ContainerdNode,
    build_restore_handler,
    routed_cni_conf,
)
from tests.kit.kubelet import Kubelet, RunningPod
from tests.kit.migration import Driver, MigrationReport, Move
from tests.kit.nats_server import NatsServer
from tests.kit.segment import POD_IP, Segment
from tests.kit.workloads import stateful_server
from tools.kube_emulator.testing import api_client, running_emulator


def missing() -> str | None:
    """Why two containerd nodes cannot run here (None: they can)."""
    tools = [t for t in ("runc", "criu", "nsenter", "gcc", "nft") if shutil.which(t) is None]
    if os.geteuid() == 0 and not tools and (BIN / "containerd").exists():
        return None
    return (
        f"needs root, runc, criu, gcc, nft (missing: {tools or 'none'}) and containerd 2.1 in {BIN}: "
        "run tools/setup/install-system-deps as root (it runs tools/setup/ensure-containerd)"
    )


NAMESPACE = "games"


def _cni_plugin(built: Path | None) -> list[str]:
    if built is not None and (built / "clm-cni.pex").is_file():
        return [shutil.which("python3.11") or sys.executable, str(built / "clm-cni.pex")]
    return [sys.executable, "-m", "services.ip_handover_agent.cni"]


@dataclass
class CriWatch:
    """Polls one container's CRI state until stopped: what kubelet's PLEG would have seen."""

    cri: CriClient
    container_id: str
    states: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> CriWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                state = state_name(self.cri.container_status(self.container_id).state)
            except CriError as exc:
                state = f"error: {exc.code.name}"
            if not self.states or self.states[-1] != state:
                self.states.append(state)
            self._stop.wait(0.02)

    def stop(self) -> list[str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.states


class ContainerdLab:
    def __init__(
        self,
        segment: Segment,
        nats: NatsServer,
        tmp: Path,
        core: client.CoreV1Api,
        kubeconfig: Path,
        *,
        pex_dir: Path | None,
        state_mib: int = 256,
        checkpoint_archives: str = "always",
    ) -> None:
        self.state_mib = state_mib
        self.segment, self.nats, self.tmp, self.core = segment, nats, tmp, core
        tls = agent_tls_dir(tmp / "agent-tls")
        self.images = Path("/dev/shm") / f"clm-ctrd-test-{segment.suffix}"
        handler = build_restore_handler(tmp / "bin" / "clm-runc")
        self.app = tmp / "app"
        self.app.mkdir(parents=True)
        shutil.copy(stateful_server.__file__, self.app / "stateful_server.py")
        self.containerd: dict[str, ContainerdNode] = {}
        self.agents: dict[str, NodeAgents] = {}
        self.kubelets: dict[str, Kubelet] = {}
        self.cris: dict[str, CriClient] = {}
        for key, first in (("a", POD_IP), ("b", "10.214.0.60")):
            node = f"n{key}{segment.suffix}"
            workdir = tmp / key
            socket = workdir / "restore-handler.sock"
            self.containerd[key] = ContainerdNode(
                name=node,
                netns=segment.nodes[key].name,
                workdir=workdir / "containerd",
                cni_plugin=_cni_plugin(pex_dir),
                cni={
                    **routed_cni_conf(
                        node=node,
                        pod_cidr="10.214.0.0/24",
                        first=first,
                        last=first,
                        workdir=workdir,
                        kubeconfig=str(kubeconfig),
                    ),
                    "routed": {"node": node, "uplink": "eth0", "nodeNetns": segment.nodes[key].name},
                },
                restore_binary=handler,
                env={"CLM_RESTORE_SOCKET": str(socket)},
                cni_netns=Path(f"/proc/{os.getpid()}/ns/net"),
            )
            ctrd = self.containerd[key]
            self.agents[key] = NodeAgents(
                node=node,
                node_netns=segment.nodes[key].name,
                workdir=workdir / "agents",
                nats_url=nats.url,
                tls_dir=tls,
                image_dir=self.images,
                pex_dir=pex_dir,
                checkpoint_env={
                    "CLM_ACK_WAIT_SECONDS": "3",
                    "CLM_CONTAINERD_SOCKET": str(ctrd.socket),
                    "CLM_CONTAINERD_STATE_DIR": str(ctrd.state),
                    "CLM_CONTAINERD_RUNC_ROOT": str(ctrd.runc_root),
                    "CLM_RESTORE_HANDLER_SOCKET": str(socket),
                    "CLM_CHECKPOINT_ARCHIVES": checkpoint_archives,
                    "CLM_CHECKPOINT_ARCHIVE_DIR": str(workdir / "checkpoints"),
                },
                network_env={"CLM_PODS_WIRED_BY_CNI": "true"},
            )

    @property
    def a(self) -> NodeAgents:
        return self.agents["a"]

    @property
    def b(self) -> NodeAgents:
        return self.agents["b"]

    def start(self) -> None:
        tars = node_images()
        for key, ctrd in self.containerd.items():
            ctrd.start()
            for tar in tars:
                ctrd.import_image(tar)
            self.cris[key] = ctrd.cri()
            self.kubelets[key] = Kubelet(
                self.cris[key], kubelet_dir=ctrd.workdir / "kubelet", cgroup_root=f"/clm-test/{ctrd.name}"
            )
        for agents in self.agents.values():
            agents.start()
        for agents in self.agents.values():
            agents.wait_ready()

    def stop(self) -> None:
        for agents in self.agents.values():
            agents.stop()
        for cri in self.cris.values():
            cri.close()
        for ctrd in self.containerd.values():
            ctrd.stop()
        shutil.rmtree(self.images, ignore_errors=True)

    def pod_object(self, name: str, *, node: str, state_mib: int | None = None) -> dict[str, Any]:
        """The server pod as the API holds it."""
        spec: dict[str, Any] = {
            "nodeName": node,
            "containers": [
                {
                    "name": "server",
                    "image": POD_IMAGE,
                    "command": [
                        "python3.11",
                        "-u",
                        "/srv/stateful_server.py",
                        str(state_mib or self.state_mib),
                    ],
                    "volumeMounts": [
                        {"name": "app", "mountPath": "/srv", "readOnly": True},
                        {"name": "data", "mountPath": "/data"},
                    ],
                }
            ],
            "volumes": [
                {"name": "app", "hostPath": {"path": str(self.app)}},
                {"name": "data", "emptyDir": {}},
            ],
        }
        body: dict[str, Any] = {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        created = self.core.create_namespaced_pod(NAMESPACE, body)
        return dict(self.core.api_client.sanitize_for_serialization(created))

    def clone_object(self, source: dict[str, Any], name: str) -> dict[str, Any]:
        """The clone pod as the coordinator creates it (the policy core's clone spec)."""
        clone = clone_spec(source, name=name, node=self.b.node)
        assert not clone.problems, clone.problems
        assert clone.pod["spec"]["runtimeClassName"] == RESTORE_HANDLER
        created = self.core.create_namespaced_pod(NAMESPACE, clone.pod)
        return dict(self.core.api_client.sanitize_for_serialization(created))

    def core_pod(self, name: str) -> dict[str, Any]:
        return dict(
            self.core.api_client.sanitize_for_serialization(self.core.read_namespaced_pod(name, NAMESPACE))
        )

    def set_pod_ip(self, name: str, ip: str) -> None:
        self.core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {"podIP": ip}})

    def move(
        self, pod: dict[str, Any], strategy: MigrationStrategy = MigrationStrategy.STOP_AND_COPY
    ) -> Move:
        meta = pod["metadata"]
        return Move(
            pod=PodRef(namespace=NAMESPACE, name=meta["name"], uid=meta["uid"]),
            pod_ip=POD_IP,
            source=self.a.node,
            destination=self.b.node,
            step_timeout=60,
            strategy=strategy,
        )

    def start_server(self, name: str, state_mib: int | None = None) -> tuple[dict[str, Any], RunningPod]:
        """The stateful server pod on node A, as kubelet starts it, answering on POD_IP."""
        source = self.pod_object(name, node=self.a.node, state_mib=state_mib)
        running = self.kubelets["a"].run_pod(source)
        self.set_pod_ip(name, POD_IP)
        self.wait_running("a", running)
        return source, running

    async def migrate(
        self,
        driver: Driver,
        source: dict[str, Any],
        clone_name: str,
        strategy: MigrationStrategy = MigrationStrategy.STOP_AND_COPY,
    ) -> tuple[MigrationReport, dict[str, Any], RunningPod | None]:
        """The move as the coordinator makes it on Kubernetes: the clone pod created before
        the dump, kubelet on B starting it (its container's creation waits in the restore
        handler), the steps sent to both agents."""
        clone = self.clone_object(self.core_pod(source["metadata"]["name"]), clone_name)
        clone_start = asyncio.create_task(asyncio.to_thread(self.kubelets["b"].run_pod, clone))
        report = await driver.migrate(dataclasses.replace(self.move(source, strategy), await_clone=True))
        try:
            clone_running = await asyncio.wait_for(clone_start, 120)
        except Exception:  # - a rolled back move's clone is refused: kubelet's start fails
            if report.ok:
                raise
            clone_running = None
        return report, clone, clone_running

    def remove(self, key: str, pod: dict[str, Any], running: RunningPod | None) -> None:
        """The pod object deleted, and kubelet on `key` tearing its pod down."""
        if running is not None:
            self.kubelets[key].remove_pod(running)
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(pod["metadata"]["name"], NAMESPACE)

    def pid_of(self, key: str, running: RunningPod, container: str = "server") -> int:
        """The container's first process on the host, as CRI reports it (verbose status)."""
        return int(self.cris[key].container_info(running.containers[container])["pid"])

    def wait_archives(self, key: str, pattern: str, timeout: float = 30) -> list[Path]:
        """The checkpoint archives node `key` keeps (written after the restore answered)."""
        directory = self.tmp / key / "checkpoints"
        deadline = time.monotonic() + timeout
        while not (found := sorted(directory.glob(pattern))):
            assert time.monotonic() < deadline, f"no checkpoint archive {pattern} in {directory}"
            time.sleep(0.1)
        return found

    def wait_running(self, key: str, running: RunningPod, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for container_id in running.containers.values():
            while state_name(self.cris[key].container_status(container_id).state) != "running":
                assert time.monotonic() < deadline, f"container {container_id} not running on {key}"
                time.sleep(0.05)


@contextlib.contextmanager
def containerd_lab(
    segment: Segment,
    nats: NatsServer,
    tmp: Path,
    *,
    pex_dir: Path | None,
    state_mib: int = 256,
    checkpoint_archives: str = "always",
) -> Iterator[ContainerdLab]:
    """Two containerd nodes with their agents, the API emulator clm-cni reads, started."""
    tmp.mkdir(parents=True, exist_ok=True)
    kubeconfig = tmp / "kubeconfig"
    with running_emulator(kubeconfig=kubeconfig) as emulator:
        core = client.CoreV1Api(api_client(emulator.url))
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        lab = ContainerdLab(
            segment,
            nats,
            tmp,
            core,
            kubeconfig,
            pex_dir=pex_dir,
            state_mib=state_mib,
            checkpoint_archives=checkpoint_archives,
        )
        try:
            lab.start()
            yield lab
        finally:
            lab.stop()
