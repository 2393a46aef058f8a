"""The sandbox's machines: one L2 segment (a bridge in its own network namespace) with the
nodes and a client host attached, each a network namespace with `eth0` on the segment.

Pods get addresses from the same subnet, so a pod's IP moves between nodes by the routed
backend's /32 route, proxy ARP and gratuitous ARP — as on a real flat pod network.
Everything is named with PREFIX, so `remove_leftovers` finds what a crashed run left.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.kit.netns import NetNS, ip, remove_stale

PREFIX = "clm-sbx"
SUBNET = "10.215.0"
CLIENT_IP = f"{SUBNET}.100"
POD_RANGE = (f"{SUBNET}.128", f"{SUBNET}.253")
# Each node hands out its own share (its CNI's host-local range); a moved pod keeps its IP.
NODE_POD_ADDRESSES = 14


def node_pod_range(index: int) -> tuple[str, str]:
    """The first and last pod address node `index` (1..9) hands out."""
    first = 128 + (index - 1) * NODE_POD_ADDRESSES
    return f"{SUBNET}.{first}", f"{SUBNET}.{first + NODE_POD_ADDRESSES - 1}"


def node_name(index: int) -> str:
    return f"sbx-{index}"


def node_ip(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


@dataclass
class Topology:
    segment: NetNS
    nodes: dict[str, NetNS]  # node name -> its namespace
    client: NetNS

    @classmethod
    def create(cls, count: int) -> Topology:
        if not 1 <= count <= 9:
            raise ValueError(f"the sandbox runs 1 to 9 nodes, not {count}")
        remove_leftovers()
        segment = NetNS(f"{PREFIX}-seg").create()
        ip("-n", segment.name, "link", "add", "br0", "type", "bridge")
        ip("-n", segment.name, "link", "set", "br0", "up")
        hosts = {node_name(i): (f"{PREFIX}-{i}", node_ip(i), f"sbxp{i}") for i in range(1, count + 1)}
        hosts["client"] = (f"{PREFIX}-client", CLIENT_IP, "sbxpc")
        made: dict[str, NetNS] = {}
        for host, (netns, address, port) in hosts.items():
            ns = NetNS(netns).create()
            ip(
                "-n",
                segment.name,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            ip("-n", segment.name, "link", "set", port, "master", "br0", "up")
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            made[host] = ns
        client = made.pop("client")
        return cls(segment=segment, nodes=made, client=client)

    def delete(self) -> None:
        for ns in [*self.nodes.values(), self.client]:
            ns.delete()
        self.segment.delete()
        remove_leftovers()


def remove_leftovers() -> list[str]:
    """Every namespace and link of an earlier sandbox (pod namespaces included: they are
    named clm-<node>-<uid>, and nodes are sbx-N), killing what still runs inside."""
    return remove_stale(PREFIX)
