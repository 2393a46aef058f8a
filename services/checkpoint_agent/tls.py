"""Mutual TLS between checkpoint agents, from the cluster's agent CA.

Pod memory holds secrets, keys and user data: it crosses the network only inside TLS 1.3,
and only between agents whose certificates the cluster's CA signed. Each agent reads three
files from one directory (on Kubernetes, the Secret `clm-agent-tls` mounted there):

    ca.crt    the CA certificates a peer's certificate must chain to (during a CA rotation,
              the old and the new CA together)
    tls.crt   this agent's certificate (SAN DNS `clm-checkpoint-agent`), signed by that CA
    tls.key   its private key

Both ends verify the other: the receiver requires a client certificate, the sender checks
the receiver's certificate and its name. The files are read again whenever they change
(kubelet swaps a mounted Secret in place), so certificates rotate without a restart: a
connection made before keeps its session and finishes, every new one uses the new files.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The name every agent certificate carries and every sender checks.
AGENT_NAME = "clm-checkpoint-agent"
FILES = ("ca.crt", "tls.crt", "tls.key")


class TlsConfigError(Exception):
    """The agent's TLS files are missing or do not make a usable identity."""


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[tuple[int, int, int], ...]
    server: ssl.SSLContext
    client: ssl.SSLContext


class AgentTls:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.reloads = 0
        self._current()  # refuse to start with files that do not work

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for name in FILES:
            try:
                # Resolved: a mounted Secret is a symlink kubelet points at new files.
                st = (self.directory / name).resolve().stat()
            except OSError as exc:
                raise TlsConfigError(
                    f"agent TLS file {self.directory / name} cannot be read ({exc.strerror}): mount the "
                    "Secret clm-agent-tls there (ca.crt, tls.crt, tls.key; `clm agent-certs` makes one)"
                ) from None
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        ca, cert, key = (str(self.directory / name) for name in FILES)
        try:
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            for context in (server, client):
                context.minimum_version = ssl.TLSVersion.TLSv1_3
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=ca)
                context.load_cert_chain(cert, key)
            client.check_hostname = True
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TlsConfigError(f"the agent TLS files in {self.directory} do not work: {exc}") from None
        return server, client

    def _current(self) -> _Loaded:
        with self._lock:
            stamp = self._stamp()
            if self._loaded is None:
                self._loaded = _Loaded(stamp, *self._contexts())
            elif self._loaded.stamp != stamp:
                try:
                    self._loaded = _Loaded(stamp, *self._contexts())
                    self.reloads += 1
                except TlsConfigError as exc:
                    # Files caught half-replaced (a rotation by hand): keep what worked and
                    # read them again on the next connection.
                    log.warning(
                        "new agent TLS files do not work yet; keeping the old", extra={"error": str(exc)}
                    )
            return self._loaded

    def server_context(self) -> ssl.SSLContext:
        return self._current().server

    def client_context(self) -> ssl.SSLContext:
        return self._current().client
