"""Start a real `nats-server` with JetStream on a free loopback port, in a temp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    path = os.environ.get("CLM_TEST_NATS_SERVER") or shutil.which("nats-server")
    if not path:
        raise RuntimeError(
            "nats-server not found: run tools/setup/install-system-deps (as root), or set "
            "CLM_TEST_NATS_SERVER to its path"
        )
    return path


def _listening_port(log: Path, offset: int) -> int:
    """The client port nats-server logged ("Listening for client connections on HOST:PORT")."""
    with log.open("rb") as out:
        out.seek(offset)
        for line in out:
            if b"Listening for client connections on" in line:
                return int(line.rsplit(b":", 1)[1])
    return 0


class NatsServer:
    """A nats-server process; `with NatsServer() as srv: srv.url`. Restartable on its port."""

    def __init__(
        self, *, port: int | None = None, store_dir: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        # 0: nats-server picks a free port itself (-p -1) and says which in its log; no race
        # with another process for a port chosen beforehand. Restarts keep the port.
        self.port = port or 0
        # e.g. ("--user", "u", "--pass", "p") or TLS flags, for secured-server tests.
        self.extra_args = extra_args
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="clm-nats-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        log = Path(self.store_dir, "nats-server.log")
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(
                [
                    nats_server_binary(),
                    "-js",
                    "-sd",
                    self.store_dir,
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port or -1),
                    "-m",
                    "0",
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}; see {log}")
            if not self.port:
                self.port = _listening_port(log, offset)
                if not self.port:
                    time.sleep(0.05)
                    continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
