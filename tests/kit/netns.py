"""Real network namespaces for tests: `ip netns` + veth pairs, cleaned up on exit.

Test traffic stays on addresses inside namespaces the tests create (see ENVIRONMENT.md).
Processes are started with `nsenter --net=...` rather than `ip netns exec`, which also
creates a mount namespace that CRIU then refuses to dump.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@dataclass
class NetNS:
    name: str
    created: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def create(self) -> NetNS:
        ip("netns", "add", self.name)
        ip("-n", self.name, "link", "set", "lo", "up")
        return self

    def veth_to_host(
        self, host_if: str, host_cidr: str, ns_if: str, ns_cidr: str, *, reachable: bool = True
    ) -> None:
        """A veth pair: `host_if` (root namespace) <-> `ns_if` (this namespace). With
        reachable=False the host side stays down: the namespace holds its address (sockets
        can be bound and restored) but nothing reaches it, so it cannot answer a peer with
        a reset before its sockets exist."""
        ip("link", "del", host_if, check=False)  # a leftover from a crashed run
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", self.name)
        ip("addr", "add", host_cidr, "dev", host_if)
        if reachable:
            ip("link", "set", host_if, "up")
        ip("-n", self.name, "addr", "add", ns_cidr, "dev", ns_if)
        ip("-n", self.name, "link", "set", ns_if, "up")
        self.created.append(host_if)

    def set_host_link(self, host_if: str, *, up: bool) -> None:
        ip("link", "set", host_if, "up" if up else "down")

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def delete(self) -> None:
        for link in self.created:
            ip("link", "del", link, check=False)
        self.created.clear()
        ip("netns", "del", self.name, check=False)

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def remove_stale(prefix: str) -> list[str]:
    """Delete namespaces named `prefix*` left by an interrupted run, killing what still runs
    inside them, and host links named `prefix*`. Returns what was removed."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(prefix):
            continue
        for pid in ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", name, check=False)
        removed.append(f"netns {name}")
    for line in ip("-br", "link").stdout.splitlines():
        link = line.split()[0].split("@")[0] if line.strip() else ""
        if link.startswith(prefix):
            ip("link", "del", link, check=False)
            removed.append(f"link {link}")
    return removed


def wait_listening(netns: str, port: int, timeout: float = 30) -> None:
    """Wait until something listens on TCP `port` in network namespace `netns`."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{netns}", "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if out.strip():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {port} in {netns} after {timeout}s")
        time.sleep(0.05)
