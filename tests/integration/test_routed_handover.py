"""The Linux routed backend on real namespaces: node A, node B and a client host on one
segment (a bridge). The pod IP moves from A to B; at every step the segment is asked, with
a raw ARP probe, who answers for the IP — never two nodes at once."""

from __future__ import annotations

import os
import subprocess

import pytest

from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.kit.segment import POD_IP, Segment, serve_identity

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def test_pod_ip_moves_from_a_to_b_without_two_owners(segment: Segment) -> None:
    node_a = RoutedBackend(node=f"na{segment.suffix}", uplink="eth0", node_netns=segment.nodes["a"].name)
    node_b = RoutedBackend(node=f"nb{segment.suffix}", uplink="eth0", node_netns=segment.nodes["b"].name)
    pod = PodNet(uid="7f9c2b1e-0000-4000-8000-000000000001", ip=POD_IP)
    servers = []
    try:
        node_a.prepare(pod)
        servers.append(serve_identity(node_a.pod_netns(pod), "A"))
        node_a.announce(pod)
        assert segment.probe() == {"a"}
        assert segment.ask_identity() == "A"

        node_b.prepare(pod)  # before the freeze: ready, holding the IP, unreachable
        node_b.prepare(pod)  # a repeated command changes nothing
        servers.append(serve_identity(node_b.pod_netns(pod), "B"))
        assert segment.probe() == {"a"}
        assert segment.ask_identity() == "A"

        node_a.withdraw(pod)  # the commit point: A stops answering first...
        assert segment.probe() == set()
        segment.client_just_learned("a")
        node_b.announce(pod)  # ...then B starts, and says so with a gratuitous ARP
        assert segment.client_neighbour() == "b", "the client did not learn the new location"
        assert segment.probe() == {"b"}
        assert segment.ask_identity() == "B"

        node_a.release(pod)
        assert node_a.inventory() == {"routes": [], "proxy_neighbours": [], "veths": [], "namespaces": []}
        inventory = node_b.inventory()
        assert inventory["routes"] == [POD_IP] and inventory["proxy_neighbours"] == [POD_IP]
        assert inventory["namespaces"] == [node_b.pod_netns(pod)]
    finally:
        for server in servers:
            server.kill()
        node_a.release(pod)
        node_b.release(pod)


def test_abort_after_prepare_leaves_a_serving_and_b_clean(segment: Segment) -> None:
    node_a = RoutedBackend(node=f"na{segment.suffix}", uplink="eth0", node_netns=segment.nodes["a"].name)
    node_b = RoutedBackend(node=f"nb{segment.suffix}", uplink="eth0", node_netns=segment.nodes["b"].name)
    pod = PodNet(uid="7f9c2b1e-0000-4000-8000-000000000002", ip=POD_IP)
    servers = []
    try:
        node_a.prepare(pod)
        servers.append(serve_identity(node_a.pod_netns(pod), "A"))
        node_a.announce(pod)
        before = node_b.inventory()
        node_b.prepare(pod)
        node_b.abort(pod)
        node_b.abort(pod)  # idempotent
        assert node_b.inventory() == before
        assert segment.probe() == {"a"}
        assert segment.ask_identity() == "A"
    finally:
        for server in servers:
            server.kill()
        node_a.release(pod)
        node_b.release(pod)


def test_prepare_interrupted_after_the_veth_lost_its_node_side_is_made_whole(segment: Segment) -> None:
    """A prepare killed midway (the soak found it: SIGKILL of the agent while preparing)
    can leave the pod's namespace holding an eth0 whose node side is gone; prepared again,
    the pair is made whole and the pod serves through it."""
    node_b = RoutedBackend(node=f"nb{segment.suffix}", uplink="eth0", node_netns=segment.nodes["b"].name)
    pod = PodNet(uid="7f9c2b1e-0000-4000-8000-000000000003", ip=POD_IP)
    ns = node_b.pod_netns(pod)
    servers = []
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        # An eth0 with its peer anywhere but the node: here, a stray namespace's.
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "stray"], check=True
        )
        node_b.prepare(pod)
        servers.append(serve_identity(ns, "B"))
        node_b.announce(pod)
        assert segment.probe() == {"b"}
        assert segment.ask_identity() == "B"
    finally:
        for server in servers:
            server.kill()
        node_b.release(pod)
