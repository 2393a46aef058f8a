"""The IP-handover agent with CLM_NETWORK_BACKEND=aws-vpc: two agent processes, one per node,
take network commands over NATS and move the pod's secondary IP between the nodes' ENIs
through EC2 calls — against moto's EC2 emulation running as a server (no AWS is reachable
from here). The node side (namespace, veth, route) is real, on the test segment."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from clm.contracts import PodRef, protocol
from services.ip_handover_agent.aws_vpc import DISCOVERY_TAG
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.integration.support import pex_dir
from tests.kit.agents import AgentProcess
from tests.kit.migration import Driver, Move
from tests.kit.nats_server import NatsServer, free_port
from tests.kit.segment import POD_IP, Segment

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class Cloud:
    url: str
    ec2: Any
    eni_a: str
    eni_b: str
    tagged_subnet: str

    def holders(self, ip: str) -> set[str]:
        enis = self.ec2.describe_network_interfaces()["NetworkInterfaces"]
        return {
            e["NetworkInterfaceId"]
            for e in enis
            if any(a["PrivateIpAddress"] == ip and not a.get("Primary") for a in e["PrivateIpAddresses"])
        }


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
        vpc = ec2.create_vpc(CidrBlock="10.214.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.214.0.0/24", AvailabilityZone="us-east-1a")
        tagged = ec2.create_subnet(VpcId=vpc, CidrBlock="10.214.9.0/24", AvailabilityZone="us-east-1a")
        tagged_id = tagged["Subnet"]["SubnetId"]
        ec2.create_tags(Resources=[tagged_id], Tags=[{"Key": DISCOVERY_TAG, "Value": "1"}])

        def eni(primary: str) -> str:  # primaries chosen: never the pod IP by chance
            made = ec2.create_network_interface(
                SubnetId=subnet["Subnet"]["SubnetId"], PrivateIpAddress=primary
            )
            return made["NetworkInterface"]["NetworkInterfaceId"]

        eni_a, eni_b = eni("10.214.0.211"), eni("10.214.0.212")
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_a, PrivateIpAddresses=[POD_IP])
        yield Cloud(url, ec2, eni_a, eni_b, tagged_id)
    finally:
        server.stop()


def start_agent(node: str, netns: str, nats_url: str, state: Path, eni: str, cloud: Cloud) -> AgentProcess:
    built = pex_dir()
    return AgentProcess(
        "ip-handover-agent",
        node,
        pex=built / "clm-ip-handover-agent.pex" if built else None,
        log_path=state / f"agent-{node}.log",
        env={
            "CLM_NATS_URL": nats_url,
            "CLM_NODE_NETNS": netns,
            "CLM_UPLINK_INTERFACE": "eth0",
            "CLM_STATE_DIR": str(state),
            "CLM_NETWORK_BACKEND": "aws-vpc",
            "CLM_AWS_ENI_ID": eni,
            "CLM_AWS_REGION": REGION,
            "CLM_AWS_ENDPOINT_URL": cloud.url,
            **CREDENTIALS,
        },
    ).start()


async def test_the_pod_ip_moves_between_enis_on_command(
    segment: Segment, nats_server: NatsServer, cloud: Cloud, tmp_path: Path
) -> None:
    a_node, b_node = f"na{segment.suffix}", f"nb{segment.suffix}"
    a = start_agent(a_node, segment.nodes["a"].name, nats_server.url, tmp_path, cloud.eni_a, cloud)
    b = start_agent(b_node, segment.nodes["b"].name, nats_server.url, tmp_path, cloud.eni_b, cloud)
    pod = PodRef(namespace="games", name="mc-0", uid=str(uuid.uuid4()))
    on_a = RoutedBackend(
        node=a_node, uplink="eth0", node_netns=segment.nodes["a"].name, segment_announce=False
    )
    on_b = RoutedBackend(
        node=b_node, uplink="eth0", node_netns=segment.nodes["b"].name, segment_announce=False
    )
    net = PodNet(uid=pod.uid, ip=POD_IP)
    driver = await Driver.connect(nats_server.url)
    try:
        a.wait_ready()
        b.wait_ready()
        on_a.prepare(net)  # the pod's network on A, as the VPC CNI made it
        on_a.announce(net)
        move = Move(pod=pod, pod_ip=POD_IP, source=a_node, destination=b_node)

        prepared = await driver.send(driver.command(move, protocol.PREPARE_NETWORK), 30)
        assert prepared.ok, prepared.error
        assert cloud.holders(POD_IP) == {cloud.eni_a}  # prepared: nothing moved yet
        withdrawn = await driver.send(driver.command(move, protocol.WITHDRAW), 30)
        assert withdrawn.ok and POD_IP not in on_a.routed_ips()
        announced = await driver.send(driver.command(move, protocol.ANNOUNCE), 30)
        assert announced.ok, announced.error
        assert cloud.holders(POD_IP) == {cloud.eni_b}  # EC2 reassigned it, and only to B
        assert POD_IP in on_b.routed_ips()
        again = await driver.send(driver.command(move, protocol.ANNOUNCE), 30)
        assert again.ok and cloud.holders(POD_IP) == {cloud.eni_b}  # idempotent
        released = await driver.send(driver.command(move, protocol.RELEASE), 30)
        assert released.ok and on_a.inventory()["namespaces"] == []
    finally:
        await driver.close()
        a.stop()
        b.stop()
        on_a.release(net)
        on_b.release(net)


async def test_a_move_the_seed_documents_rule_out_is_refused_at_prepare(
    segment: Segment, nats_server: NatsServer, cloud: Cloud, tmp_path: Path
) -> None:
    b_node = f"nb{segment.suffix}"
    b = start_agent(b_node, segment.nodes["b"].name, nats_server.url, tmp_path, cloud.eni_b, cloud)
    tagged_eni = cloud.ec2.create_network_interface(
        SubnetId=cloud.tagged_subnet, PrivateIpAddress="10.214.9.200"
    )
    ip = "10.214.9.20"
    cloud.ec2.assign_private_ip_addresses(
        NetworkInterfaceId=tagged_eni["NetworkInterface"]["NetworkInterfaceId"], PrivateIpAddresses=[ip]
    )
    pod = PodRef(namespace="games", name="mc-1", uid=str(uuid.uuid4()))
    driver = await Driver.connect(nats_server.url)
    try:
        b.wait_ready()
        move = Move(pod=pod, pod_ip=ip, source="elsewhere", destination=b_node)
        refused = await driver.send(driver.command(move, protocol.PREPARE_NETWORK), 30)
        assert not refused.ok
        assert DISCOVERY_TAG in (refused.error or "") and "one subnet" in (refused.error or ""), refused.error
        on_b = RoutedBackend(node=b_node, uplink="eth0", node_netns=segment.nodes["b"].name)
        assert on_b.inventory()["namespaces"] == []  # refused before touching the node
    finally:
        await driver.close()
        b.stop()
