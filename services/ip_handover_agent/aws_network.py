"""The AWS VPC backend as the agent uses it: EC2 moves the pod's secondary IP between the
nodes' ENIs; on the node, the pod's namespace, veth and route are made as the routed
backend makes them, without proxy or gratuitous ARP (the VPC routes by ENI assignment).

- prepare (destination): refuse early what the seed documents rule out (the source ENI
  is found by the IP it holds), then the pod's namespace, unreachable;
- withdraw (source): the node stops routing the IP to the pod;
- announce (destination): EC2 reassigns the IP to this node's ENI, then the node routes it;
- abort / release: as the routed backend.
"""

from __future__ import annotations

from typing import Any

from clm.contracts.protocol import StepFailed
from services.ip_handover_agent.aws_vpc import AwsHandoverError, AwsNode, AwsVpcBackend
from services.ip_handover_agent.routed import PodNet, RoutedBackend


class AwsVpcNetwork:
    def __init__(self, local: RoutedBackend, vpc: AwsVpcBackend, node: AwsNode) -> None:
        self.local, self.vpc, self.node = local, vpc, node

    @classmethod
    def from_settings(
        cls,
        *,
        local: RoutedBackend,
        node: str,
        eni_id: str,
        region: str,
        endpoint_url: str | None,
        custom_network: bool,
        prefix_delegation: bool,
    ) -> AwsVpcNetwork:
        import boto3

        ec2: Any = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)
        return cls(
            local,
            AwsVpcBackend(ec2, prefix_delegation=prefix_delegation),
            AwsNode(name=node, eni_id=eni_id, custom_network=custom_network),
        )

    def _source(self, pod: PodNet) -> AwsNode:
        eni = self.vpc.eni_holding(pod.ip)
        if eni is None:
            raise StepFailed(f"no ENI in the VPC holds {pod.ip} as a secondary address")
        # The other node's custom-networking label is not known here; the zone rule is
        # checked whenever this node uses custom networking.
        return AwsNode(name=f"the node of {eni}", eni_id=eni, custom_network=self.node.custom_network)

    def prepare(self, pod: PodNet) -> None:
        source = self._source(pod)
        if source.eni_id != self.node.eni_id:
            try:
                reasons = self.vpc.refusals(source, self.node)
            except AwsHandoverError as exc:
                raise StepFailed(str(exc)) from None
            if reasons:
                raise StepFailed("refused: " + "; ".join(reasons))
        self.local.prepare(pod)

    def announce(self, pod: PodNet) -> None:
        try:
            eni = self.vpc.eni_holding(pod.ip)
            if eni != self.node.eni_id:
                if eni is None:
                    raise StepFailed(f"no ENI in the VPC holds {pod.ip}")
                self.vpc.move(
                    pod.ip,
                    AwsNode(name="source", eni_id=eni, custom_network=self.node.custom_network),
                    self.node,
                )
        except AwsHandoverError as exc:
            raise StepFailed(str(exc)) from None
        self.local.announce(pod)

    def withdraw(self, pod: PodNet) -> None:
        self.local.withdraw(pod)

    def abort(self, pod: PodNet) -> None:
        self.local.abort(pod)

    def release(self, pod: PodNet) -> None:
        self.local.release(pod)

    def routed_ips(self) -> set[str]:
        return self.local.routed_ips()

    def inventory(self) -> dict[str, list[str]]:
        return self.local.inventory()
