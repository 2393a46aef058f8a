"""The checkpoint agent's settings (CLM_* environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clm.runtime.settings import NodeAgentSettings


class CheckpointAgentSettings(NodeAgentSettings):
    criu_binary: str = "criu"
    # Containers are runc containers under this state root (the local node runtime).
    runc_root: Path | None = None
    # Kubernetes nodes: containerd's CRI socket. Set, the agent finds pods over CRI, dumps
    # them with the shim's runc state (containerd_runc_root) leaving them frozen, and clones
    # are restored by containerd through CLM's RuntimeClass handler (restore_handler_socket).
    containerd_socket: Path | None = None
    containerd_state_dir: Path = Path("/run/containerd")
    containerd_runc_root: Path = Path("/run/containerd/runc/k8s.io")
    # Where clm-runc (the clm-restore RuntimeClass handler's binary) asks this agent.
    restore_handler_socket: Path = Path("/run/clm/restore-handler.sock")
    # Containerd nodes: keep the standard checkpoint archive (`checkpointctl show` reads it) of
    # each container restored here: never, when its restore failed (to see why), or always.
    checkpoint_archives: Literal["never", "failed", "always"] = "never"
    checkpoint_archive_dir: Path = Path("/var/lib/clm/checkpoint-agent/checkpoints")
    state_dir: Path = Path("/var/lib/clm/checkpoint-agent")
    # Checkpoint images; a tmpfs makes the dump faster (it holds a pod's memory while moving).
    image_dir: Path = Path("/var/lib/clm/checkpoint-agent/images")
    netns_dir: Path = Path("/var/run/netns")
    # Tests and the sandbox: the network namespace standing for this node.
    node_netns: str | None = None
    # Copy the packets a frozen pod misses and send them again when it runs (see holdback.py).
    holdback: bool = True
    # Restore memory lazily (CRIU lazy-pages from the received images, over userfaultfd): the
    # pages are filled faster than CRIU's eager restore reads them. Falls back to eager.
    lazy_restore: bool = True
    # Send the dump's memory pages while CRIU still writes them (stop-and-copy, pre-copy's
    # final dump): the freeze holds the larger of dump and transfer, not their sum. Off: the
    # images go once the dump has ended (a node whose CPUs the two would fight over).
    stream_dump: bool = True
    # The local runc runtime only (the sandbox): where restored containers' output goes, one
    # CRI log file per container id, as the node's runtime keeps it. Unset: discarded.
    # (On Kubernetes nodes the container runtime keeps pod logs itself.)
    container_log_dir: Path | None = None
    transfer_listen_host: str = "0.0.0.0"
    # 0 picks a free port (tests); the published address carries the real one.
    transfer_port: int = Field(default=7400, ge=0, le=65535)
    # The address other nodes' agents reach this one at (on Kubernetes: status.hostIP).
    transfer_advertise_host: str | None = None
    # Where this agent relays post-copy page traffic in mutual TLS (page_relay.py). Unset:
    # the transfer port + 1 (0, a free port, when that is 0).
    pages_port: int | None = Field(default=None, ge=0, le=65535)
    # Before freezing the pod, the source keeps trying to reach the destination's agent this
    # long (it may be restarting); a transfer with no progress this long fails (a dead link).
    transfer_connect_seconds: float = Field(default=20.0, gt=0)
    transfer_stall_seconds: float = Field(default=10.0, gt=0)
    # The agent's TLS identity: ca.crt, tls.crt, tls.key (the Secret clm-agent-tls mounted
    # here). Unset: this node takes part in no migration, and says why (tls.py).
    agent_tls_dir: Path | None = None
    # NodeCapabilities is repeated this often; the labeler unlabels a node whose agent goes quiet.
    capabilities_interval_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _tls_readable(self) -> CheckpointAgentSettings:
        if self.agent_tls_dir is not None:
            missing = [n for n in ("ca.crt", "tls.crt", "tls.key") if not (self.agent_tls_dir / n).is_file()]
            if missing:
                raise ValueError(
                    f"CLM_AGENT_TLS_DIR: {str(self.agent_tls_dir)!r} has no {', '.join(missing)} "
                    "(mount the Secret clm-agent-tls there; `clm agent-certs` makes one)"
                )
        return self
