"""The AWS VPC backend: the pod's secondary private IP moves from the source instance's ENI
to the destination's, with EC2's reassignment (one call: the IP leaves the source ENI as it
lands on the destination, so the VPC never routes it to both).

It refuses, with a reason and before touching anything, what the seed documents rule out:
- prefix delegation on (pods get /28 prefixes; one IP cannot move alone);
- subnets tagged for discovery (`kubernetes.io/role/cni`);
- standard networking across subnets;
- custom networking (ENIConfig is per availability zone) across zones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DISCOVERY_TAG = "kubernetes.io/role/cni"


class AwsHandoverError(RuntimeError):
    pass


@dataclass(frozen=True)
class AwsNode:
    name: str
    # The ENI that carries pod IPs on this node.
    eni_id: str
    # The node carries live.cast.ai/custom-network=true (ENIConfig, dedicated pod subnets).
    custom_network: bool = False


class AwsVpcBackend:
    def __init__(self, ec2: Any, *, prefix_delegation: bool = False) -> None:
        self.ec2 = ec2
        self.prefix_delegation = prefix_delegation

    def _eni(self, eni_id: str) -> dict[str, Any]:
        found = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"]
        if not found:
            raise AwsHandoverError(f"network interface {eni_id} does not exist")
        return found[0]

    def _subnet(self, subnet_id: str) -> dict[str, Any]:
        return self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]

    def refusals(self, source: AwsNode, destination: AwsNode) -> list[str]:
        """Every reason this move cannot happen (empty: it can)."""
        reasons = []
        if self.prefix_delegation:
            reasons.append(
                "prefix delegation is on (ENABLE_PREFIX_DELEGATION=true): pod IPs come in "
                "/28 prefixes and one IP cannot move alone"
            )
        src_eni, dst_eni = self._eni(source.eni_id), self._eni(destination.eni_id)
        src_subnet, dst_subnet = self._subnet(src_eni["SubnetId"]), self._subnet(dst_eni["SubnetId"])
        for subnet in {s["SubnetId"]: s for s in (src_subnet, dst_subnet)}.values():
            if any(tag["Key"] == DISCOVERY_TAG for tag in subnet.get("Tags") or []):
                reasons.append(
                    f"subnet {subnet['SubnetId']} is tagged {DISCOVERY_TAG} (subnet discovery "
                    "must not be configured)"
                )
        if source.custom_network or destination.custom_network:
            if src_subnet["AvailabilityZone"] != dst_subnet["AvailabilityZone"]:
                reasons.append(
                    f"custom networking (ENIConfig is per zone): {source.name} is in "
                    f"{src_subnet['AvailabilityZone']}, {destination.name} in "
                    f"{dst_subnet['AvailabilityZone']}"
                )
        elif src_subnet["SubnetId"] != dst_subnet["SubnetId"]:
            reasons.append(
                f"standard networking needs one subnet: {source.name} is in "
                f"{src_subnet['SubnetId']}, {destination.name} in {dst_subnet['SubnetId']}"
            )
        return reasons

    def holder(self, ip: str, *enis: str) -> str | None:
        """Which of `enis` carries `ip` as a secondary address."""
        for eni_id in enis:
            addresses = self._eni(eni_id).get("PrivateIpAddresses") or []
            if any(a["PrivateIpAddress"] == ip and not a.get("Primary") for a in addresses):
                return eni_id
        return None

    def eni_holding(self, ip: str) -> str | None:
        """The ENI that carries `ip` as a secondary address anywhere in the region."""
        try:
            found = self.ec2.describe_network_interfaces(
                Filters=[{"Name": "addresses.private-ip-address", "Values": [ip]}]
            )["NetworkInterfaces"]
        except Exception:  # - an endpoint without this filter: scan instead
            found = []
        if not found:
            # Emulators do not all know the filter; EC2 does, so this scan is their path only.
            pages = self.ec2.get_paginator("describe_network_interfaces").paginate()
            found = [eni for page in pages for eni in page["NetworkInterfaces"]]
        for eni in found:
            addresses = eni.get("PrivateIpAddresses") or []
            if any(a["PrivateIpAddress"] == ip and not a.get("Primary") for a in addresses):
                return eni["NetworkInterfaceId"]
        return None

    def move(self, ip: str, source: AwsNode, destination: AwsNode) -> str:
        """Reassign `ip` from the source ENI to the destination's. Idempotent: a repeated
        command finds the IP already there and changes nothing."""
        reasons = self.refusals(source, destination)
        if reasons:
            raise AwsHandoverError("; ".join(reasons))
        current = self.holder(ip, source.eni_id, destination.eni_id)
        if current == destination.eni_id:
            return "already-on-destination"
        if current is None:
            raise AwsHandoverError(f"{ip} is on neither {source.eni_id} nor {destination.eni_id}")
        self.ec2.assign_private_ip_addresses(
            NetworkInterfaceId=destination.eni_id, PrivateIpAddresses=[ip], AllowReassignment=True
        )
        # EC2 takes the IP off the source ENI as part of the reassignment; an emulator (moto)
        # may not, so make sure the source lets go of it.
        if self.holder(ip, source.eni_id) is not None:
            self.ec2.unassign_private_ip_addresses(NetworkInterfaceId=source.eni_id, PrivateIpAddresses=[ip])
        if self.holder(ip, destination.eni_id) is None or self.holder(ip, source.eni_id) is not None:
            raise AwsHandoverError(f"EC2 did not move {ip} to {destination.eni_id}")
        return "moved"
