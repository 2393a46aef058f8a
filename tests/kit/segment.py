"""A shared L2 segment for network tests: a bridge in its own namespace with nodes A, B
and a client host attached, plus helpers that ask the segment who answers for a pod IP."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.ip_handover_agent import arp
from tests.kit.netns import NetNS, ip, remove_stale, wait_listening

POD_IP = "10.214.0.50"
CLIENT_IP = "10.214.0.100"
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

    def client_just_learned(self, node: str) -> None:
        """A fresh neighbour entry on the client, as if it had spoken to `node` a moment ago:
        Linux refuses to replace an entry younger than `locktime` (1 s) with anything but a
        real gratuitous ARP, so a handover right after traffic is the hard case."""
        client = self.nodes["client"].name
        ip("-n", client, "neigh", "flush", "to", POD_IP, check=False)
        ip("-n", client, "neigh", "add", POD_IP, "lladdr", self.macs[node], "dev", "eth0", "nud", "reachable")

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


# Test files run in parallel under Pants: segments are used one at a time, so removing a
# crashed run's leftovers can never touch a live segment.
LOCK = Path("/tmp/clm-segment-tests.lock")


@contextlib.contextmanager
def make_segment() -> Iterator[Segment]:
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _segment() as seg:
            yield seg


@contextlib.contextmanager
def _segment() -> Iterator[Segment]:
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
    wait_listening(netns, 7000)
    return proc
