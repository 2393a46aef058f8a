"""What the checkpoint agent needs of a node's container runtime, and nothing more.

The agent finds a pod's containers, checkpoints them with CRIU, restores them and removes
them only through `ContainerRuntime`; `runc.Runc` implements it for runc containers (the
sandbox's node runtime, tests), and a containerd adapter can stand beside it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from services.checkpoint_agent.lazy_dumps import LazyCheckpoint


class RuntimeCommandError(RuntimeError):
    """A runtime command failed; the message carries runc's and CRIU's own words."""


class LazyPagesUnavailable(RuntimeCommandError):
    """No `criu lazy-pages` daemon can run on this node (no userfaultfd): restore eagerly."""


# The annotations containerd's CRI plugin puts on every container, and that the local node
# runtime puts on its runc containers too: how the agent finds a pod's containers.
POD_UID = "io.kubernetes.pod.uid"
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"


@dataclass(frozen=True)
class Container:
    id: str
    status: str
    pid: int
    bundle: Path
    annotations: dict[str, str]

    @property
    def name(self) -> str:
        return self.annotations.get(CONTAINER_NAME, self.id)


@dataclass(frozen=True)
class CheckpointResult:
    image_dir: Path
    seconds: float
    bytes: int


@dataclass
class PageFill:
    """A lazy restore: the container runs, and a `criu lazy-pages` daemon brings its memory
    (post-copy: from the source's page server; else from the local images); it exits 0 once
    every page is in place."""

    container_id: str
    image_dir: Path
    daemon: subprocess.Popen[bytes]


class ContainerRuntime(Protocol):
    # Checkpoints leave the source's tasks frozen (rolled back by `thaw`), not ended.
    leaves_source_running: bool
    # Clones are restored by the node's container runtime through CLM's RuntimeClass
    # handler (restore_handler/), not by the agent.
    restores_through_handler: bool

    def containers(self) -> list[Container]: ...
    def pod_containers(self, pod_uid: str) -> list[Container]: ...
    def run(self, container_id: str, bundle: Path) -> None: ...
    def state(self, container_id: str) -> str | None: ...
    def checkpoint(
        self, container_id: str, image_dir: Path, *, tcp_established: bool, parent: str | None = None
    ) -> CheckpointResult: ...
    def pre_dump(self, container_id: str, image_dir: Path, *, parent: str | None) -> CheckpointResult: ...
    def restore(
        self,
        container_id: str,
        bundle: Path,
        image_dir: Path,
        *,
        tcp_established: bool,
        output: Path | None = None,
    ) -> float: ...
    def checkpoint_lazy(self, container_id: str, image_dir: Path) -> LazyCheckpoint: ...
    def restore_lazy(
        self,
        container_id: str,
        bundle: Path,
        image_dir: Path,
        *,
        page_server: tuple[str, int] | None = None,
        output: Path | None = None,
    ) -> PageFill: ...
    def pause(self, container_id: str) -> None: ...
    def resume(self, container_id: str) -> None: ...
    def delete(self, container_id: str) -> None: ...
    def thaw(self, container_id: str) -> bool: ...
    def finish_source(self, container_id: str) -> None: ...
    def package_rootfs(self, container: Container, target: Path) -> None: ...
    def node_problems(self) -> list[str]: ...
    def settle(self, container_id: str, *, images: Path | None = None, timeout: float = 600) -> None: ...
