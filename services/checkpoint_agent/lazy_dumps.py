"""The source's post-copy dumps: the frozen containers whose memory CRIU's page servers
still hold, by migration. Their ports are kept on disk, so an agent that restarts during the
fill goes on relaying pages (runc and CRIU run in their own sessions and outlive it)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.runtime import LazyDump


def free_local_port() -> int:
    # CRIU binds the page server itself (runc offers no way to hand it a socket): the port
    # is free when chosen, and CRIU binds it moments later.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LazyDumps:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.running: dict[str, dict[str, LazyDump]] = {}
        self._writing = threading.Lock()  # a pod's containers are dumped in parallel threads

    def add(self, uid: str, name: str, dump: LazyDump) -> None:
        with self._writing:
            self.running.setdefault(uid, {})[name] = dump
            ports = self.ports(uid)
            ports[name] = dump.port
            self.layout.lazy_record(uid).write_text(json.dumps(ports))

    def ports(self, uid: str) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self.layout.lazy_record(uid).read_text()).items()}
        except (OSError, ValueError):
            return {}

    def is_lazy(self, uid: str) -> bool:
        return self.layout.lazy_record(uid).exists()

    def port_for(self, uid: str, container: str) -> int | None:
        return self.ports(uid).get(container)

    def give_back(self, uid: str, name: str) -> None:
        """Before the destination has resumed: break the page server's wait (a connection
        that ends at once), so CRIU resumes the frozen container here and lifts its lock."""
        port = self.port_for(uid, name)
        if port is None:
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            pass  # already gone: the page server ended on its own

    def forget(self, uid: str) -> None:
        self.running.pop(uid, None)
        self.layout.lazy_record(uid).unlink(missing_ok=True)

    @staticmethod
    def log_tail(work_dir: Path) -> str:
        log = work_dir / "dump.log"
        if not log.exists():
            return ""
        lines = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line]
        return "; ".join(lines[-3:])
