"""The AWS VPC backend against moto's EC2 emulation (no AWS is reachable)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from services.ip_handover_agent.aws_vpc import DISCOVERY_TAG, AwsHandoverError, AwsNode, AwsVpcBackend

POD_IP = "10.0.1.50"


@dataclass
class Vpc:
    ec2: Any
    subnet_a1: str
    subnet_a2: str
    subnet_b: str
    tagged: str


@pytest.fixture
def vpc(monkeypatch: pytest.MonkeyPatch) -> Iterator[Vpc]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]

        def subnet(cidr: str, zone: str) -> str:
            return ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"][
                "SubnetId"
            ]

        tagged = subnet("10.0.9.0/24", "us-east-1a")
        ec2.create_tags(Resources=[tagged], Tags=[{"Key": DISCOVERY_TAG, "Value": "1"}])
        yield Vpc(
            ec2,
            subnet("10.0.1.0/24", "us-east-1a"),
            subnet("10.0.2.0/24", "us-east-1a"),
            subnet("10.0.3.0/24", "us-east-1b"),
            tagged,
        )


_PRIMARY = iter(range(200, 250))


def eni(vpc: Vpc, subnet: str, *secondary: str) -> str:
    # A primary address of our choosing: left to chance, EC2 (and moto) may hand out the
    # very address a test then assigns as a secondary one.
    cidr = vpc.ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["CidrBlock"]
    primary = cidr.rsplit(".", 1)[0] + f".{next(_PRIMARY)}"
    made = vpc.ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=primary)
    eni_id = made["NetworkInterface"]["NetworkInterfaceId"]
    if secondary:
        vpc.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, PrivateIpAddresses=list(secondary))
    return eni_id


def test_secondary_ip_moves_with_reassignment(vpc: Vpc) -> None:
    source = AwsNode("node-a", eni(vpc, vpc.subnet_a1, POD_IP))
    destination = AwsNode("node-b", eni(vpc, vpc.subnet_a1))
    backend = AwsVpcBackend(vpc.ec2)
    assert backend.holder(POD_IP, source.eni_id, destination.eni_id) == source.eni_id
    assert backend.move(POD_IP, source, destination) == "moved"
    assert backend.holder(POD_IP, source.eni_id) is None  # never on both
    assert backend.holder(POD_IP, destination.eni_id) == destination.eni_id
    assert backend.move(POD_IP, source, destination) == "already-on-destination"  # idempotent


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("across subnets", "standard networking needs one subnet"),
        ("custom networking across zones", "custom networking (ENIConfig is per zone)"),
        ("prefix delegation", "prefix delegation is on"),
        ("subnet discovery tag", DISCOVERY_TAG),
    ],
)
def test_refusals_from_the_seed_documents(vpc: Vpc, case: str, fragment: str) -> None:
    backend = AwsVpcBackend(vpc.ec2, prefix_delegation=case == "prefix delegation")
    src_subnet, dst_subnet, custom = vpc.subnet_a1, vpc.subnet_a1, False
    if case == "across subnets":
        dst_subnet = vpc.subnet_a2
    elif case == "custom networking across zones":
        dst_subnet, custom = vpc.subnet_b, True
    elif case == "subnet discovery tag":
        src_subnet = dst_subnet = vpc.tagged
    source = AwsNode(
        "node-a",
        eni(vpc, src_subnet, "10.0.9.50" if src_subnet == vpc.tagged else POD_IP),
        custom_network=custom,
    )
    destination = AwsNode("node-b", eni(vpc, dst_subnet))
    ip = "10.0.9.50" if src_subnet == vpc.tagged else POD_IP
    with pytest.raises(AwsHandoverError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        backend.move(ip, source, destination)
    assert backend.holder(ip, source.eni_id) == source.eni_id  # nothing was touched


def test_custom_networking_within_a_zone_is_allowed(vpc: Vpc) -> None:
    source = AwsNode("node-a", eni(vpc, vpc.subnet_a1, POD_IP), custom_network=True)
    destination = AwsNode("node-b", eni(vpc, vpc.subnet_a2), custom_network=True)
    backend = AwsVpcBackend(vpc.ec2)
    assert backend.refusals(source, destination) == []


def test_ip_on_neither_eni_is_an_error(vpc: Vpc) -> None:
    source = AwsNode("node-a", eni(vpc, vpc.subnet_a1))
    destination = AwsNode("node-b", eni(vpc, vpc.subnet_a1))
    with pytest.raises(AwsHandoverError, match="on neither"):
        AwsVpcBackend(vpc.ec2).move(POD_IP, source, destination)


def test_the_eni_holding_an_ip_is_found_by_the_ip(vpc: Vpc) -> None:
    backend = AwsVpcBackend(vpc.ec2)
    holder = eni(vpc, vpc.subnet_a1, POD_IP)
    eni(vpc, vpc.subnet_a1)
    assert backend.eni_holding(POD_IP) == holder
    assert backend.eni_holding("10.0.1.99") is None
