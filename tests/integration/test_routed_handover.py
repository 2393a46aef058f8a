"""The Linux routed backend on real namespaces: node A, node B and a client host on one
segment (a bridge). The pod IP moves from A to B; at every step the segment is asked, with
a raw ARP probe, who answers for the IP — never two nodes at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from clm.testing.netns import NetNS, ip, remove_stale
from services.ip_handover_agent import arp
from services.ip_handover_agent.routed import PodNet, RoutedBackend

POD_IP = "10.214.0.50"
CLIENT_IP = "10.214.0.100"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@dataclass
class Segment:
    seg: NetNS
    nodes: dict[str, NetNS]
    macs: dict[str, str]
    suffix: str

    def probe(self) -> set[str]:
        """MACs answering who-has POD_IP, asked from the client host; named by node."""
        out = subprocess.run(
            self.nodes["client"].command(
                sys.executable,
                "-m",
                arp.__name__,
                "probe",
                "eth0",
                POD_IP,
                CLIENT_IP,
                "0.4",
            ),
            capture_output=True,
            text=True,
            env=ENV,
            check=True,
        ).stdout.split()
        names = {mac: name for name, mac in self.macs.items()}
        return {names.get(mac, mac) for mac in out}

    def client_neighbour(self) -> str | None:
        line = ip("-n", self.nodes["client"].name, "neigh", "show", POD_IP).stdout
        mac = line.split("lladdr")[1].split()[0] if "lladdr" in line else None
        return {m: n for n, m in self.macs.items()}.get(mac or "", mac)

    def ask_identity(self) -> str:
        code = (
            f"import socket; s = socket.create_connection(('{POD_IP}', 7000), timeout=3); "
            "print(s.recv(16).decode().strip())"
        )
        return subprocess.run(
            self.nodes["client"].command(sys.executable, "-c", code),
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()


@pytest.fixture
def segment() -> Iterator[Segment]:
    for prefix in ("clm-seg-", "clm-n"):
        remove_stale(prefix)
    suffix = str(os.getpid())[-4:]
    seg = NetNS(f"clm-seg-{suffix}").create()
    ip("-n", seg.name, "link", "add", "br0", "type", "bridge")
    ip("-n", seg.name, "link", "set", "br0", "up")
    nodes, macs = {}, {}
    for name, address in (("a", "10.214.0.11"), ("b", "10.214.0.12"), ("client", CLIENT_IP)):
        ns = NetNS(f"clm-n{name[0]}{suffix}").create()
        port = f"p{name[0]}{suffix}"
        ip("-n", seg.name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ip("-n", seg.name, "link", "set", port, "master", "br0", "up")
        ip("-n", ns.name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns.name, "link", "set", "eth0", "up")
        nodes[name] = ns
        macs[name] = ip("-n", ns.name, "-br", "link", "show", "eth0").stdout.split()[2]
    try:
        yield Segment(seg, nodes, macs, suffix)
    finally:
        for ns in nodes.values():
            ns.delete()
        seg.delete()
        remove_stale("clm-n")


def serve_identity(netns: str, identity: str) -> subprocess.Popen:
    code = (
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 7000)); s.listen()\n"
        f"while True:\n    c, _ = s.accept(); c.sendall(b'{identity}\\n'); c.close()\n"
    )
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", code])
    time.sleep(0.3)
    return proc


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
