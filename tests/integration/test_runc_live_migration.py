"""Real CRIU live migration of a runc container between network namespaces.

A stateful server (256 MiB of state) runs in a container whose network namespace stands
for node A; a client holds one TCP connection and sends requests continuously. The
container is checkpointed (TCP connections included), node A's namespace is torn down,
node B's is created with the same pod IP, and the container is restored there. The client
never reconnects, no request is lost or answered twice, and the state continues where it
was (its hash is checked against a replay). The images reach node B only through the
agents' authenticated, integrity-checked stream, not a shared path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from clm.testing.netns import NetNS, remove_stale
from clm.testing.workloads import stateful_server
from services.checkpoint_agent.bundle import set_netns, write_bundle
from services.checkpoint_agent.runc import Runc
from services.checkpoint_agent.transfer import TransferStats, receive_directory, send_directory

MIB = 256
POD_IP = "10.213.0.2"
MISSING = [
    tool
    for tool in ("runc", "criu", "ip", "nsenter")
    if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING),
    reason=f"needs root and runc, criu, iproute2 (missing: {MISSING or 'root'}); "
    "run tools/setup/install-system-deps as root",
)


class Client(threading.Thread):
    """One connection, requests back to back; records every answer and the largest gap."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.answers: list[int] = []
        self.largest_gap = 0.0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.sock: socket.socket | None = None

    def connect(self, deadline: float = 30) -> None:
        end = time.monotonic() + deadline
        while True:
            try:
                self.sock = socket.create_connection((POD_IP, 7000), timeout=2)
                self.sock.settimeout(20)
                return
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def run(self) -> None:
        assert self.sock is not None
        stream = self.sock.makefile("rwb", buffering=0)
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                self.sock.sendall(b"inc\n")
                self.answers.append(int(stream.readline()))
                now = time.monotonic()
                self.largest_gap = max(self.largest_gap, now - last)
                last = now
                time.sleep(0.001)
        except BaseException as exc:  # - reported by the test
            self.error = exc

    def ask_hash(self) -> str:
        assert self.sock is not None
        self.sock.sendall(b"hash\n")
        return self.sock.makefile("rb", buffering=0).readline().decode().strip()


def stream_images(source: Path, target: Path) -> TransferStats:
    """Node A's agent streams the images to node B's agent (no shared filesystem)."""
    secret = os.urandom(32)

    async def run() -> TransferStats:
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                done.set_result(
                    await receive_directory(reader, writer, destination_for={"m": target}, secret=secret)
                )
            except Exception as exc:  # - re-raised below
                done.set_exception(exc)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sent = await send_directory("127.0.0.1", port, source, migration="m", secret=secret)
        await done
        server.close()
        return sent

    return asyncio.run(run())


def expected_hash(requests: int) -> str:
    state = stateful_server.initial_state(MIB * 2**20)
    for n in range(1, requests + 1):
        stateful_server.mutate(state, n)
    return hashlib.sha256(state).hexdigest()


def test_container_moves_between_nodes_with_its_tcp_connection(tmp_path: Path) -> None:
    # An interrupted earlier run may have left a container answering on the pod IP.
    remove_stale("clm-a-")
    remove_stale("clm-b-")
    remove_stale("clmh")
    suffix = str(os.getpid())[-5:]
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(stateful_server.__file__, app / "stateful_server.py")
    runtime = Runc(root=tmp_path / "runc-state")
    node_a = NetNS(f"clm-a-{suffix}").create()
    node_b = NetNS(f"clm-b-{suffix}")
    host_if = f"clmh{suffix}"
    try:
        node_a.veth_to_host(host_if, "10.213.0.1/24", "eth0", f"{POD_IP}/24")
        bundle = write_bundle(
            tmp_path / "bundle",
            netns=node_a.path,
            app_dir=app,
            args=["/usr/bin/python3", "-u", "/srv/stateful_server.py", str(MIB)],
        )
        runtime.run("pod-on-a", bundle)
        client = Client()
        client.connect()
        client.start()
        time.sleep(1.0)  # the client is busy when the freeze comes

        images = tmp_path / "node-a-images"
        checkpoint = runtime.checkpoint("pod-on-a", images, tcp_established=True)
        assert runtime.state("pod-on-a") is None  # checkpointed and gone from node A
        assert checkpoint.bytes > MIB * 2**20  # the state really was dumped

        node_a.delete()  # node A forgets the pod and its IP
        # Prepared but unreachable: were node B to answer for the IP before the sockets are
        # restored, its kernel would reset the client's retransmissions.
        node_b.create()
        node_b.veth_to_host(host_if, "10.213.0.1/24", "eth0", f"{POD_IP}/24", reachable=False)
        set_netns(bundle, node_b.path)
        received = tmp_path / "node-b-images"
        transfer = stream_images(images, received)
        assert transfer.bytes == sum(p.stat().st_size for p in received.iterdir())
        runtime.restore("pod-on-b", bundle, received, tcp_established=True)
        node_b.set_host_link(host_if, up=True)  # the commit: traffic for the IP reaches node B
        restore_log = (received / "restore.log").read_text(errors="replace")
        assert runtime.state("pod-on-b") == "running", restore_log[-3000:]

        time.sleep(1.5)
        client.stop.set()
        client.join(30)
        assert client.error is None, f"the client's connection broke: {client.error!r}"
        answers = client.answers
        broken = next((i for i, n in enumerate(answers) if n != i + 1), None)
        assert broken is None, (
            f"a request was lost or answered twice: answer {broken + 1} was "
            f"{answers[broken]} (around: {answers[max(0, broken - 3):broken + 3]})"
        )
        assert len(answers) > 100
        assert client.ask_hash() == expected_hash(len(answers)), "the state did not continue"
        print(
            f"{len(answers)} requests, largest gap {client.largest_gap:.3f}s, "
            f"checkpoint {checkpoint.seconds:.2f}s, image {checkpoint.bytes / 2**20:.0f} MiB, "
            f"streamed at {transfer.mib_per_s:.0f} MiB/s"
        )
    finally:
        runtime.delete("pod-on-a")
        runtime.delete("pod-on-b")
        node_a.delete()
        node_b.delete()
