"""The Linux routed backend: a node answers for the pod IPs it hosts, on a shared segment.

A node that hosts a pod routes its IP to the pod's veth and answers ARP for it on its
uplink (a proxy-neighbour entry), as a VPC does for a secondary IP. Steps, all idempotent:

- prepare (destination, before the freeze): the pod's network namespace with its IP and
  default route, and the veth to the node — but no route and no ARP answer on the uplink,
  so nothing outside can reach it (and it can reset nobody's connection);
- withdraw (source, at the commit point): stop answering for the IP;
- announce (destination, right after): route + proxy-neighbour entry + gratuitous ARP, so
  peers learn the new location at once. Withdraw comes first: never two nodes answering;
- abort (destination, before the commit point): undo prepare;
- release (source, after the commit point): withdraw and remove the pod's namespace.

Everything it creates carries a mark (routes: protocol 199; veths and namespaces: its
prefix) so `inventory` lists it and a restarted agent can reconcile instead of leaking.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clm.contracts.protocol import StepFailed
from clm.runtime.podnet import pod_netns_name
from services.ip_handover_agent import arp

ROUTE_PROTO = "199"
GATEWAY = "169.254.1.1"  # link-local next hop the pod uses: the node side of its veth


@dataclass(frozen=True)
class PodNet:
    uid: str
    ip: str


class RoutedBackend:
    def __init__(
        self,
        *,
        node: str,
        uplink: str,
        node_netns: str | None = None,
        segment_announce: bool = True,
        wired_by_cni: bool = False,
    ) -> None:
        """`node_netns` is for tests and the sandbox, where a node is a network namespace;
        on a real node the agent runs in the host's namespace (None). Without
        `segment_announce` the node only routes the IP to the pod (no proxy ARP, no
        gratuitous ARP): where the network itself moves the IP, as a VPC does."""
        self.node, self.uplink, self.node_netns = node, uplink, node_netns
        # Kubernetes nodes: clm-cni wires a clone's namespace when kubelet starts its sandbox
        # (the IP unannounced) and unwires it when the pod goes; the agent only moves routes.
        self.wired_by_cni = wired_by_cni
        self.segment_announce = segment_announce

    # ----- naming -----

    def pod_netns(self, pod: PodNet) -> str:
        return pod_netns_name(self.node, pod.uid)

    def veth(self, pod: PodNet) -> str:
        return "clm" + hashlib.sha256(pod.uid.encode()).hexdigest()[:10]

    # ----- commands -----

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        ns = ["-n", self.node_netns] if self.node_netns else []
        return _run(["ip", *ns, *args], check=check)

    def _in_node(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.node_netns}", *argv] if self.node_netns else argv

    def _sysctl(self, key: str, value: str) -> None:
        _run(self._in_node(["sysctl", "-qw", f"{key}={value}"]))

    def _exists(self, netns: str) -> bool:
        return Path("/var/run/netns", netns).exists()

    # ----- steps -----

    def prepare(self, pod: PodNet) -> None:
        if self.wired_by_cni:
            return  # the clone's CNI ADD does it, with the pod's own namespace
        ns, veth = self.pod_netns(pod), self.veth(pod)
        if not self._exists(ns):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self._ip("link", "show", veth, check=False).returncode != 0:
            # An eth0 without our veth is what an interrupted prepare left (no pod runs in a
            # namespace being prepared): removed, so the pair is made whole again.
            _run(["ip", "-n", ns, "link", "del", "eth0"], check=False)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(["ip", "-n", ns, "addr", "replace", f"{pod.ip}/32", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "replace", GATEWAY, "dev", "eth0", "scope", "link"])
        _run(["ip", "-n", ns, "route", "replace", "default", "via", GATEWAY, "dev", "eth0"])
        self._ip("link", "set", veth, "up")
        self._sysctl("net.ipv4.ip_forward", "1")
        # The pod reaches its gateway at the node side of the veth, by a fixed neighbour
        # entry (proxy ARP would need the node to have a route to the link-local gateway).
        veth_mac = self._ip("-br", "link", "show", veth).stdout.split()[2]
        _run(
            [
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                GATEWAY,
                "lladdr",
                veth_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]
        )

    def announce(self, pod: PodNet) -> None:
        veth = self.veth(pod)
        if self._ip("link", "show", veth, check=False).returncode != 0:
            raise StepFailed(f"cannot announce {pod.ip}: pod {pod.uid} was not prepared on {self.node}")
        self._ip("route", "replace", f"{pod.ip}/32", "dev", veth, "proto", ROUTE_PROTO)
        if not self.segment_announce:
            return
        # Proxy ARP answers are delayed by up to 0.8 s by default: a handover cannot wait.
        self._sysctl(f"net.ipv4.neigh.{self.uplink}.proxy_delay", "0")
        self._ip("neigh", "replace", "proxy", pod.ip, "dev", self.uplink)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        _run(
            self._in_node([sys.executable, "-m", arp.__name__, "garp", self.uplink, pod.ip]),
            env=env,
        )

    def withdraw(self, pod: PodNet) -> None:
        self._ip("neigh", "del", "proxy", pod.ip, "dev", self.uplink, check=False)
        self._ip("route", "del", f"{pod.ip}/32", "proto", ROUTE_PROTO, check=False)

    def abort(self, pod: PodNet) -> None:
        self.release(pod)

    def release(self, pod: PodNet) -> None:
        self.withdraw(pod)
        if self.wired_by_cni:
            return  # the veth and namespace go with the pod's sandbox (CNI DEL)
        self._ip("link", "del", self.veth(pod), check=False)
        if self._exists(self.pod_netns(pod)):
            _run(["ip", "netns", "del", self.pod_netns(pod)])

    # ----- what is on the node -----

    def routed_ips(self) -> set[str]:
        return set(self.inventory()["routes"])

    def inventory(self) -> dict[str, list[str]]:
        routes = self._ip("route", "show", "proto", ROUTE_PROTO).stdout.split("\n")
        proxies = self._ip("neigh", "show", "proxy", "dev", self.uplink).stdout.split("\n")
        links = self._ip("-br", "link").stdout.split("\n")
        namespaces = _run(["ip", "netns", "list"]).stdout.split("\n")
        prefix = f"clm-{self.node}-"
        return {
            "routes": sorted(r.split()[0] for r in routes if r.strip()),
            "proxy_neighbours": sorted(p.split()[0] for p in proxies if p.strip()),
            "veths": sorted(
                line.split()[0].split("@")[0] for line in links if line.strip() and line.startswith("clm")
            ),
            "namespaces": sorted(n.split()[0] for n in namespaces if n.startswith(prefix)),
        }


def _run(
    argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if check and proc.returncode != 0:
        raise StepFailed(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc
