"""The source's post-copy page servers: for each migration, the port CRIU's page server
serves each container's lazily restorable pages on, from the full dump in the outgoing
images. Kept on disk, so an agent that restarts during the fill goes on relaying (the page
servers run in their own sessions and outlive it). The pod itself is not running: rolling
back is the stop-and-copy restore from the same images."""

from __future__ import annotations

import json
import socket
import threading

from services.checkpoint_agent.layout import Layout


def free_local_port() -> int:
    # CRIU binds the page server itself: the port is free when chosen, and bound moments
    # later (the page server's start fails, and says so, in the rare case it was taken).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LazyDumps:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._writing = threading.Lock()  # a pod's containers are handled in parallel threads

    def add(self, uid: str, name: str, port: int) -> None:
        with self._writing:
            ports = self.ports(uid)
            ports[name] = port
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

    def forget(self, uid: str) -> None:
        self.layout.lazy_record(uid).unlink(missing_ok=True)
