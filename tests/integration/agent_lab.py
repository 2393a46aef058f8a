"""Two nodes' agents as real processes over a real NATS, a stateful server in a runc
container on node A and a client on the segment: what the live-migration tests share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clm.contracts import MigrationStrategy, protocol
from clm.runtime.podnet import pod_netns_name, pod_netns_path
from tests.integration.support import pex_dir
from tests.kit.agents import NodeAgents, agent_tls_dir
from tests.kit.migration import Driver, Move
from tests.kit.nats_server import NatsServer
from tests.kit.netns import wait_listening
from tests.kit.podlab import LabPod, expected_hash, remove_pod, running_on, start_pod
from tests.kit.segment import POD_IP, Segment

MISSING = [t for t in ("runc", "criu", "nsenter", "iptables-save") if shutil.which(t) is None]
NEEDS_NODES = pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING),
    reason=f"needs root and runc, criu, iptables (missing: {MISSING or 'root'}); "
    "run tools/setup/install-system-deps as root",
)
STATE_MIB = 256


class Lab:
    def __init__(
        self,
        segment: Segment,
        nats: NatsServer,
        tmp: Path,
        state_mib: int = STATE_MIB,
        b_env: dict[str, str] | None = None,
    ) -> None:
        self.segment, self.nats, self.tmp = segment, nats, tmp
        tls = agent_tls_dir(tmp / "agent-tls")
        images = Path("/dev/shm") / f"clm-test-{segment.suffix}"
        self.images = images
        self.nodes = {
            key: NodeAgents(
                node=f"n{key}{segment.suffix}",
                node_netns=segment.nodes[key].name,
                workdir=tmp / key,
                nats_url=nats.url,
                tls_dir=tls,
                image_dir=images,
                pex_dir=pex_dir(),
                # A command an agent died on goes to its successor within this wait.
                checkpoint_env={"CLM_ACK_WAIT_SECONDS": "3", **((b_env or {}) if key == "b" else {})},
            )
            for key in ("a", "b")
        }
        self.pod = LabPod(
            namespace="games", name="mc-0", uid=str(uuid.uuid4()), ip=POD_IP, state_mib=state_mib
        )

    @property
    def a(self) -> NodeAgents:
        return self.nodes["a"]

    @property
    def b(self) -> NodeAgents:
        return self.nodes["b"]

    def move(self, strategy: MigrationStrategy = MigrationStrategy.STOP_AND_COPY) -> Move:
        return Move(
            pod=self.pod.ref,
            pod_ip=self.pod.ip,
            source=self.a.node,
            destination=self.b.node,
            step_timeout=60,
            strategy=strategy,
        )

    def everywhere(self) -> dict[str, tuple[str, Path]]:
        return {n.node: (n.node_netns, n.runc_root) for n in self.nodes.values()}

    def b_is_clean(self) -> None:
        assert not running_on(self.pod, self.b.runc_root)
        assert not pod_netns_path(self.b.node, self.pod.uid).exists()
        leftovers = [p for p in (self.images / self.b.node / "in").glob("*") if p.exists()]
        assert leftovers == [], leftovers


@contextlib.contextmanager
def running_lab(
    segment: Segment,
    nats: NatsServer,
    tmp: Path,
    state_mib: int = STATE_MIB,
    ready_timeout: float = 90,
    b_env: dict[str, str] | None = None,
) -> Iterator[Lab]:
    """Both nodes' agents up (each within `ready_timeout`) and the pod running on A (`b_env`:
    more settings for B's checkpoint agent); everything removed after."""
    lab = Lab(segment, nats, tmp, state_mib, b_env)
    try:
        for node in lab.nodes.values():
            node.start()
        for node in lab.nodes.values():
            node.wait_ready(ready_timeout)
        start_pod(
            lab.pod,
            node=lab.a.node,
            node_netns=lab.a.node_netns,
            runc_root=lab.a.runc_root,
            workdir=tmp / "pod",
        )
        yield lab
    finally:
        remove_pod(lab.pod, nodes=lab.everywhere())
        for node in lab.nodes.values():
            node.stop()
        shutil.rmtree(lab.images, ignore_errors=True)


@pytest.fixture
def lab(segment: Segment, nats_server: NatsServer, tmp_path: Path) -> Iterator[Lab]:
    with running_lab(segment, nats_server, tmp_path) as running:
        yield running


def check_client(lab: Lab, result: dict) -> None:
    assert result["error"] is None, f"the client's connection broke: {result['error']}"
    assert result["in_order"], "a request was lost or answered twice"
    assert result["answers"] > 50
    assert result["hash"] == expected_hash(lab.pod.state_mib, result["answers"]), "the state did not continue"


async def take_pod_port_on_b(lab: Lab, driver: Driver, move: Move) -> asyncio.subprocess.Process:
    """Prepare B's network, then take the pod's port there: CRIU cannot bind the restored
    listening socket, so the restore really fails. The caller kills what this returns."""
    prepared = await driver.send(driver.command(move, protocol.PREPARE_NETWORK), 30)
    assert prepared.ok, prepared.error
    netns = pod_netns_name(lab.b.node, lab.pod.uid)
    blocker = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net=/var/run/netns/{netns}",
        "python3",
        "-c",
        "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); time.sleep(600)",
    )
    await asyncio.to_thread(wait_listening, netns, 7000)
    return blocker
