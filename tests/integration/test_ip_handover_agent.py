"""The IP-handover agent as a service: two agent processes (the PEX), one per node, take
network commands over NATS and move a pod IP on a real segment; each answers with a
StepResult. A step sent to the wrong side is refused with a reason, not executed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import nats
import pytest

from clm.contracts import (
    MigrationRef,
    NetworkCommand,
    NetworkStep,
    PodRef,
    StepResult,
    decode,
    encode,
    streams,
    subjects,
)
from clm.testing.nats_server import NatsServer, free_port
from clm.testing.segment import POD_IP, Segment, serve_identity
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.integration.support import fetch_from_stream, pex_path, wait_ready

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
POD = PodRef(namespace="games", name="mc-0", uid="5d1e9c3a-0000-4000-8000-00000000abcd")
MIGRATION = MigrationRef(namespace="games", name="mc-0-move", uid="mig-uid-1")


class Agent:
    def __init__(self, node: str, netns: str, nats_url: str) -> None:
        self.node, self.port = node, free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CLM_NATS_URL": nats_url,
            "CLM_HTTP_HOST": "127.0.0.1",
            "CLM_HTTP_PORT": str(self.port),
            "CLM_NODE_NAME": node,
            "CLM_NODE_NETNS": netns,
            "CLM_UPLINK_INTERFACE": "eth0",
        }
        python = shutil.which("python3.11") or "python3"
        self.proc = subprocess.Popen(
            [python, str(pex_path("ip-handover-agent"))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self) -> None:
        wait_ready(self.proc, self.port, f"agent for {self.node}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def agents(segment: Segment, nats_server: NatsServer) -> Iterator[tuple[Agent, Agent]]:
    a = Agent(f"na{segment.suffix}", segment.nodes["a"].name, nats_server.url)
    b = Agent(f"nb{segment.suffix}", segment.nodes["b"].name, nats_server.url)
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def send(url: str, node: str, step: NetworkStep, source: str, destination: str) -> StepResult:
    command = NetworkCommand(
        node=node,
        step=step,
        migration=MIGRATION,
        pod=POD,
        pod_ip=POD_IP,
        source_node=source,
        destination_node=destination,
    )
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(
            command.subject(), encode(command), headers={"Nats-Msg-Id": command.message_id}
        )
    finally:
        await nc.close()
    subject = subjects.migration_step(MIGRATION.namespace, MIGRATION.name, "network", step)
    for msg in await fetch_from_stream(url, subject, streams.EVENTS.name, 10, timeout=3):
        result = decode(msg.data, StepResult)
        if result.command_id == command.message_id:
            return result
    raise AssertionError(f"no StepResult for {step} on {node}")


async def test_agents_move_the_pod_ip_on_command(
    segment: Segment, nats_server: NatsServer, agents: tuple[Agent, Agent]
) -> None:
    a, b = agents
    url = nats_server.url
    # The pod runs on node A (set up as its CNI plugin would have at pod creation).
    on_a = RoutedBackend(node=a.node, uplink="eth0", node_netns=segment.nodes["a"].name)
    pod = PodNet(uid=POD.uid, ip=POD_IP)
    servers = []
    try:
        on_a.prepare(pod)
        on_a.announce(pod)
        servers.append(serve_identity(on_a.pod_netns(pod), "A"))
        assert segment.ask_identity() == "A"

        refused = await send(url, a.node, NetworkStep.PREPARE, a.node, b.node)
        assert not refused.ok and "destination-node step" in (refused.error or "")

        prepared = await send(url, b.node, NetworkStep.PREPARE, a.node, b.node)
        assert prepared.ok and prepared.details["action"] == "prepare", prepared.error
        servers.append(serve_identity(f"clm-{b.node}-{POD.uid[:12]}", "B"))
        assert segment.probe() == {"a"}  # prepared, not reachable

        withdrawn = await send(url, a.node, NetworkStep.COMMIT, a.node, b.node)
        assert withdrawn.ok and withdrawn.details["action"] == "withdraw"
        assert segment.probe() == set()
        announced = await send(url, b.node, NetworkStep.COMMIT, a.node, b.node)
        assert announced.ok and announced.details["action"] == "announce"
        assert segment.probe() == {"b"}
        assert segment.ask_identity() == "B"

        released = await send(url, a.node, NetworkStep.RELEASE, a.node, b.node)
        assert released.ok
        assert on_a.inventory() == {"routes": [], "proxy_neighbours": [], "veths": [], "namespaces": []}
    finally:
        for server in servers:
            server.kill()
        on_a.release(pod)
        RoutedBackend(node=b.node, uplink="eth0", node_netns=segment.nodes["b"].name).release(pod)
