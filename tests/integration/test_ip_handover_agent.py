"""The IP-handover agent as a service: two agent processes (the PEX), one per node, take
network commands over NATS and move a pod IP on a real segment; each answers with a
StepResult. A step sent to the wrong side is refused with a reason, not executed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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
from services.ip_handover_agent.ledger import Ledger
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.integration.support import fetch_from_stream, pex_dir
from tests.kit.agents import AgentProcess
from tests.kit.nats_server import NatsServer
from tests.kit.segment import POD_IP, Segment, serve_identity

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
POD = PodRef(namespace="games", name="mc-0", uid="5d1e9c3a-0000-4000-8000-00000000abcd")
MIGRATION = MigrationRef(namespace="games", name="mc-0-move", uid="mig-uid-1")


def start_agent(node: str, netns: str, nats_url: str, state_dir: Path, **env: str) -> AgentProcess:
    built = pex_dir()
    return AgentProcess(
        "ip-handover-agent",
        node,
        pex=built / "clm-ip-handover-agent.pex" if built else None,
        log_path=state_dir / f"agent-{node}.log",
        env={
            "CLM_NATS_URL": nats_url,
            "CLM_NODE_NETNS": netns,
            "CLM_UPLINK_INTERFACE": "eth0",
            "CLM_STATE_DIR": str(state_dir),
            **env,
        },
    ).start()


@pytest.fixture
def agents(
    segment: Segment, nats_server: NatsServer, tmp_path: Path
) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    a = start_agent(f"na{segment.suffix}", segment.nodes["a"].name, nats_server.url, tmp_path)
    b = start_agent(f"nb{segment.suffix}", segment.nodes["b"].name, nats_server.url, tmp_path)
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
    segment: Segment, nats_server: NatsServer, agents: tuple[AgentProcess, AgentProcess]
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


def test_a_restarted_agent_finishes_what_it_left_half_done(
    segment: Segment, nats_server: NatsServer, tmp_path: Path
) -> None:
    node, netns = f"nb{segment.suffix}", segment.nodes["b"].name
    backend = RoutedBackend(node=node, uplink="eth0", node_netns=netns)
    ledger = Ledger(tmp_path / node)
    # As a crashed agent leaves it: an abort started on a prepared pod (its namespace still
    # there), and an announced pod whose route went missing.
    half_aborted = PodNet(uid="a1aaaaaa-0000-4000-8000-000000000001", ip="10.214.0.61")
    backend.prepare(half_aborted)
    ledger.begin(half_aborted.uid, half_aborted.ip, "prepare")
    ledger.finish(half_aborted.uid, "prepare")
    ledger.begin(half_aborted.uid, half_aborted.ip, "abort")
    drifted = PodNet(uid="a2aaaaaa-0000-4000-8000-000000000002", ip="10.214.0.62")
    backend.prepare(drifted)
    backend.announce(drifted)
    ledger.begin(drifted.uid, drifted.ip, "announce")
    ledger.finish(drifted.uid, "announce")
    backend.withdraw(drifted)
    # Not the agent's: set up by the CNI plugin at pod creation; must be left alone.
    foreign = PodNet(uid="a3aaaaaa-0000-4000-8000-000000000003", ip="10.214.0.63")
    backend.prepare(foreign)
    backend.announce(foreign)
    agent = start_agent(node, netns, nats_server.url, tmp_path)
    try:
        agent.wait_ready()
        inventory = backend.inventory()
        assert backend.pod_netns(half_aborted) not in inventory["namespaces"]
        assert ledger.get(half_aborted.uid) is None
        assert drifted.ip in inventory["routes"] and ledger.get(drifted.uid).state == "announced"
        assert foreign.ip in inventory["routes"] and backend.pod_netns(foreign) in inventory["namespaces"]
    finally:
        agent.stop()
        for pod in (half_aborted, drifted, foreign):
            backend.release(pod)
