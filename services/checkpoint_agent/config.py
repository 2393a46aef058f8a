"""The checkpoint agent's configuration, shared by both sides of a move."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from clm.contracts import NodeCapabilities
from clm.contracts.protocol import StepFailed
from services.checkpoint_agent.container_log import log_path
from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.tls import AgentTls

# The last NodeCapabilities a node's agent published (None: it never did).
CapabilityLookup = Callable[[str], Awaitable[NodeCapabilities | None]]


@dataclass
class AgentConfig:
    node: str
    state_dir: Path
    image_dir: Path
    netns_dir: Path = Path("/var/run/netns")
    criu: str = "criu"
    # Mutual TLS with the other agents (the cluster's agent CA); None refuses migrations.
    tls: AgentTls | None = None
    # Tests and the sandbox: the namespace standing for this node (None: the host's).
    node_netns: Path | None = None
    # Copy the packets a frozen pod misses and send them again once it runs (holdback.py).
    holdback: bool = True
    # Restore memory through userfaultfd from the received images (runc.Runc.restore).
    lazy_restore: bool = True
    # Send the pages image while CRIU writes it (transfer.Growing).
    stream_dump: bool = True
    # Restored containers' output: CRI log files named by container id (None: discarded).
    container_log_dir: Path | None = None
    # The destination's agent may be restarting: how long to keep trying before the pod is
    # frozen. And how long a transfer may make no progress before it fails (the pod, frozen,
    # then runs again here instead of waiting out the step's timeout).
    transfer_connect_seconds: float = 20.0
    transfer_stall_seconds: float = 10.0
    # Containerd nodes: checkpoint archives (checkpointctl reads them) of the pods restored
    # here, kept in checkpoint_archive_dir: never, only when the restore failed, or always.
    checkpoint_archives: str = "never"
    checkpoint_archive_dir: Path | None = None

    @property
    def layout(self) -> Layout:
        return Layout(state_dir=self.state_dir, image_dir=self.image_dir)

    def output_for(self, container_id: str) -> Path | None:
        log_dir = self.container_log_dir
        return log_path(log_dir, container_id) if log_dir is not None else None

    def require_tls(self) -> AgentTls:
        if self.tls is None:
            raise StepFailed(
                "this node's checkpoint agent has no TLS identity, and memory never crosses the network "
                "in the clear: set CLM_AGENT_TLS_DIR to the mounted Secret clm-agent-tls"
            )
        return self.tls
