"""CRIU's two ways of copying a running process's memory in a pre-dump, side by side (in the
VM: this machine's kernel has no soft-dirty bits).

- splice (CRIU's default): while the process is frozen, vmsplice its pages into pipes; write
  the pipes out after it runs again.
- read (`--pre-dump-mode=read`): while frozen, only note which pages to copy; read them with
  process_vm_readv after it runs again.

Each row pre-dumps the stateful server (its writer rewriting 1% of its pages a second) twice,
round 2 on top of round 1, with `criu pre-dump` itself, while a client sends requests back to
back: the largest gap between two answers is the interruption a round costs the pod.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from services.checkpoint_agent.criu_stats import read_stats

SERVER = Path(__file__).resolve().parents[2] / "tests" / "kit" / "workloads" / "stateful_server.py"
PORT = 7000
MODES = ("splice", "read")


class GapClient:
    """Requests back to back on one connection; the largest gap between two answers."""

    def __init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=600)
        self.reader = self.sock.makefile("rb")
        self.largest = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self.stopping.is_set():
            self.sock.sendall(b"inc\n")
            self.reader.readline()
            now = time.perf_counter()
            self.largest, last = max(self.largest, now - last), now

    def take_largest(self) -> float:
        largest, self.largest = self.largest, 0.0
        return largest

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.sock.close()


def _serve(size_mib: int, dirty_percent: float) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(size_mib), str(dirty_percent)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # CRIU dumps a session leader without --shell-job
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the stateful server exited with {server.returncode}") from None
            time.sleep(0.2)
    server.kill()
    raise TimeoutError("the stateful server did not listen within 600 s")


def _pre_dump(pid: int, images: Path, mode: str, parent: str | None) -> dict[str, Any]:
    images.mkdir(parents=True)
    args = ["criu", "pre-dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", "--track-mem"]
    args += [f"--pre-dump-mode={mode}"]
    if parent:
        args.append(f"--prev-images-dir={parent}")
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        log = (images / "dump.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"criu pre-dump --pre-dump-mode={mode} failed: {proc.stderr.strip()}\n{log}")
    stats = read_stats(images / "stats-dump")
    return {
        "seconds": round(seconds, 3),
        "frozen_s": round(float(stats.get("frozen_seconds", 0.0)), 3),
        "pages": int(stats.get("pages_written", 0)),
    }


def compare(sizes: list[int], dirty_percent: float = 1.0, pause: float = 2.0) -> list[dict[str, Any]]:
    """One row per (size, mode): two rounds' time, frozen time, pages and largest client gap."""
    rows = []
    for size in sizes:
        for mode in MODES:
            work = Path(tempfile.mkdtemp(prefix="clm-predump-mode-"))
            server = _serve(size, dirty_percent)
            client = GapClient()
            try:
                time.sleep(pause)
                client.take_largest()
                first = _pre_dump(server.pid, work / "1", mode, None)
                first_gap = client.take_largest()
                time.sleep(pause)
                second = _pre_dump(server.pid, work / "2", mode, "../1")
                second_gap = client.take_largest()
                rows.append(
                    {
                        "state_mib": size,
                        "mode": mode,
                        "round1_s": first["seconds"],
                        "round1_frozen_s": first["frozen_s"],
                        "round1_gap_s": round(first_gap, 3),
                        "round1_pages": first["pages"],
                        "round2_s": second["seconds"],
                        "round2_frozen_s": second["frozen_s"],
                        "round2_gap_s": round(second_gap, 3),
                        "round2_pages": second["pages"],
                    }
                )
            finally:
                client.close()
                server.kill()
                server.wait()
                shutil.rmtree(work, ignore_errors=True)
    return rows
