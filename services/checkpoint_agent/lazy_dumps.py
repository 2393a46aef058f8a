"""The source's post-copy page servers: for each migration and container, the agent's end
of the socket pair CRIU's page server serves that container's lazily restorable pages on,
from the full dump in the outgoing images. The record on disk says which containers are
served; the sockets live in the agent, so a restarted agent serves no more pages (the
orphaned page servers see their socket close and exit) and the destination's restore fails
and rolls back. The pod itself is not running: rolling back is the stop-and-copy restore
from the same images."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

from services.checkpoint_agent.layout import Layout


class LazyDumps:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._writing = threading.Lock()
        self._sockets: dict[tuple[str, str], socket.socket] = {}

    def add(self, uid: str, name: str, sock: socket.socket | None = None) -> None:
        with self._writing:
            names = set(self.names(uid)) | {name}
            self.layout.lazy_record(uid).write_text(json.dumps(sorted(names)))
            if sock is not None:
                old = self._sockets.pop((uid, name), None)
                if old is not None:
                    old.close()
                self._sockets[(uid, name)] = sock

    def names(self, uid: str) -> list[str]:
        try:
            return [str(n) for n in json.loads(self.layout.lazy_record(uid).read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def is_lazy(self, uid: str) -> bool:
        return self.layout.lazy_record(uid).exists()

    def take(self, uid: str, container: str) -> socket.socket | None:
        """The page server's socket for one connection from the destination (once)."""
        with self._writing:
            return self._sockets.pop((uid, container), None)

    def forget(self, uid: str) -> None:
        with self._writing:
            for key in [k for k in self._sockets if k[0] == uid]:
                with contextlib.suppress(OSError):
                    self._sockets.pop(key).close()
            self.layout.lazy_record(uid).unlink(missing_ok=True)
