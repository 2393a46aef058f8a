"""A stateful pod on a test node and a client holding one connection to it.

The pod is made the way a node's runtime makes one: its network by the routed backend (as
the CNI plugin does at pod creation: namespace, IP, route, ARP answer), its container by
runc with the CRI annotations the checkpoint agent finds pods by.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clm.contracts import PodRef
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent.bundle import write_bundle
from services.checkpoint_agent.runc import Runc
from services.checkpoint_agent.runtime import CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.kit.workloads import counting_client, stateful_server

PORT = 7000


@dataclass(frozen=True)
class LabPod:
    namespace: str
    name: str
    uid: str
    ip: str
    state_mib: int
    # The server's writer: this share of its pages rewritten every second (0: none).
    dirty_percent: float = 0.0
    # How the writer moves: "sweep" through the whole state, or "hot" (the same pages).
    dirty_pattern: str = "sweep"

    @property
    def ref(self) -> PodRef:
        return PodRef(namespace=self.namespace, name=self.name, uid=self.uid)

    @property
    def container_id(self) -> str:
        return f"{self.name}-server"


def start_pod(pod: LabPod, *, node: str, node_netns: str, runc_root: Path, workdir: Path) -> None:
    backend = RoutedBackend(node=node, uplink="eth0", node_netns=node_netns)
    net = PodNet(uid=pod.uid, ip=pod.ip)
    backend.prepare(net)
    backend.announce(net)
    app = workdir / "app"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy(stateful_server.__file__, app / "stateful_server.py")
    bundle = write_bundle(
        workdir / "bundles" / pod.uid / "server",
        args=["/usr/bin/python3", "-u", "/srv/stateful_server.py", str(pod.state_mib)]
        + ([str(pod.dirty_percent), pod.dirty_pattern] if pod.dirty_percent else []),
        netns=pod_netns_path(node, pod.uid),
        app_dir=app,
        annotations={
            POD_UID: pod.uid,
            POD_NAME: pod.name,
            POD_NAMESPACE: pod.namespace,
            CONTAINER_NAME: "server",
        },
        cgroups_path=f"/clm/{node}/{pod.container_id}",
    )
    Runc(root=runc_root).run(pod.container_id, bundle)


def remove_pod(pod: LabPod, *, nodes: dict[str, tuple[str, Path]]) -> None:
    """Delete the pod's containers and network from every node ({node: (netns, runc root)})."""
    for node, (netns, runc_root) in nodes.items():
        Runc(root=runc_root).delete(pod.container_id)
        RoutedBackend(node=node, uplink="eth0", node_netns=netns).release(PodNet(uid=pod.uid, ip=pod.ip))


def running_on(pod: LabPod, runc_root: Path) -> bool:
    return Runc(root=runc_root).state(pod.container_id) == "running"


def lock_rules(node: str, pod: LabPod) -> str:
    """CRIU's network-lock rules left in the pod's namespace on `node` ('' when none)."""
    netns = pod_netns_path(node, pod.uid)
    if not netns.exists():
        return ""
    out = subprocess.run(
        ["nsenter", f"--net={netns}", "iptables-save"], capture_output=True, text=True, check=False
    ).stdout
    out += subprocess.run(
        ["nsenter", f"--net={netns}", "ip6tables-save"], capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(line for line in out.splitlines() if "CRIU" in line)


def expected_hash(state_mib: int, requests: int) -> str:
    state = stateful_server.initial_state(state_mib * 2**20)
    for n in range(1, requests + 1):
        stateful_server.mutate(state, n)
    return hashlib.sha256(state).hexdigest()


class CountingClient:
    """counting_client.py in the client host's namespace: one connection, requests back to back."""

    def __init__(self, client_netns: str, pod_ip: str, workdir: Path, *, patience: float = 60) -> None:
        """`patience`: how long the client waits for one answer before it reports an error."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.stop_file, self.result_file = workdir / "client.stop", workdir / "client.json"
        for path in (self.stop_file, self.result_file, Path(f"{self.result_file}.ready")):
            path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{client_netns}",
                sys.executable,
                counting_client.__file__,
                pod_ip,
                str(PORT),
                str(self.stop_file),
                str(self.result_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CLM_CLIENT_PATIENCE_SECONDS": str(patience)},
        )
        deadline = time.monotonic() + 30
        while not Path(f"{self.result_file}.ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"the client could not connect to {pod_ip}: {why}")
            time.sleep(0.05)

    def answers(self) -> int:
        """Answers so far (the client reports its progress twice a second)."""
        progress = Path(f"{self.result_file}.progress")
        return int(json.loads(progress.read_text())["answers"]) if progress.exists() else 0

    def wait_answers(self, more: int = 50, timeout: float = 60) -> int:
        """Wait until the client has had `more` answers after now: the connection works (a
        wait on the client's own progress, not on the clock)."""
        target = self.answers() + more
        deadline = time.monotonic() + timeout
        while (seen := self.answers()) < target:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                raise AssertionError(f"the client got {seen} answers, not {target}, within {timeout}s {why}")
            time.sleep(0.05)
        return seen

    def finish(self, timeout: float = 90) -> dict:
        self.stop_file.touch()
        self.proc.wait(timeout)
        return json.loads(self.result_file.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
