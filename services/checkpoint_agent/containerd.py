"""The container runtime adapter for Kubernetes nodes running containerd 2.

kubelet owns the pods here, so the agent does nothing kubelet would take for a crash:
- Containers are found over CRI (the labels containerd's CRI plugin puts on them); their
  bundles are the runc shim's, under containerd's state directory.
- A dump leaves the tasks frozen instead of ending them (`runc pause`, then CRIU with
  `--leave-running`): the shim and kubelet never see an exit, and CRI keeps reporting the
  source container Running until the source pod is deleted at the end of the move. The
  pod's network namespace is locked first (an nftables table that drops everything but
  loopback), since CRIU lifts its own lock once it leaves the tasks running: no byte
  reaches or leaves the frozen copy. A rollback is a thaw and the lock lifted, no restore.
- A finished source is left to kubelet, which stops it when the pod object goes.
- Restores go through the RuntimeClass handler (restore_handler.py): containerd's shim runs
  the restore itself, so the clone's processes are the shim's and CRI's own.
runc is called with the shim's state root, so every command sees what the shim sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

from clm.policy import names
from clm.runtime.cri.client import CriClient, CriError
from services.checkpoint_agent.checkpoint_archive import write_config_dump
from services.checkpoint_agent.lazy_dumps import LazyCheckpoint
from services.checkpoint_agent.runc import Runc, criu_log_tail
from services.checkpoint_agent.runtime import (
    CONTAINER_NAME,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    CheckpointResult,
    Container,
    RuntimeCommandError,
)

# containerd's runc shim keeps each task's bundle here, under containerd's `state`.
TASKS = Path("io.containerd.runtime.v2.task") / "k8s.io"
LOCK_TABLE = "clm_frozen"
# What the network lock is: drop everything but loopback, both ways, before conntrack.
LOCK_RULES = f"""table inet {LOCK_TABLE} {{
  chain input {{ type filter hook prerouting priority -400; policy accept; iifname "lo" accept; drop; }}
  chain output {{ type filter hook output priority -400; policy accept; oifname "lo" accept; drop; }}
}}
"""
ROOTFS_DIFF = "rootfs-diff.tar"
RESTORE_HANDLER = names.RESTORE_RUNTIME_CLASS  # the RuntimeClass's handler has its name
VOLUMES = "volumes"
EMPTY_DIR = "kubernetes.io~empty-dir"
DELETED_FILES = "deleted.files"


def netns_of(config: dict) -> Path | None:
    path = next((n.get("path") for n in config["linux"]["namespaces"] if n["type"] == "network"), None)
    return Path(path) if path else None


def overlay_upperdir(mountpoint: Path, mountinfo: str) -> Path | None:
    """The writable layer of the overlay mounted at `mountpoint` (a container's rootfs)."""
    target = str(mountpoint.resolve())
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[4] != target:
            continue
        dash = fields.index("-")
        if fields[dash + 1] != "overlay":
            continue
        for option in fields[dash + 3].split(","):
            if option.startswith("upperdir="):
                return Path(option.removeprefix("upperdir="))
    return None


def is_whiteout(path: Path) -> bool:
    """overlayfs marks a file deleted from a lower layer with a 0:0 character device."""
    st = path.lstat()
    return (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0


def write_rootfs_diff(upperdir: Path, target: Path) -> list[str]:
    """The container's changes to its image: `rootfs-diff.tar` of what it wrote, and the
    list of what it deleted (returned, and written as `deleted.files`), as CRI-O and Podman
    put them in a checkpoint archive."""
    deleted: list[str] = []
    with tarfile.open(target / ROOTFS_DIFF, "w") as tar:
        for dirpath, dirnames, filenames in os.walk(upperdir):
            here = Path(dirpath)
            for name in [*dirnames, *filenames]:
                path = here / name
                relative = str(path.relative_to(upperdir))
                if is_whiteout(path):
                    deleted.append(relative)
                    continue
                tar.add(path, arcname=relative, recursive=False)
    (target / DELETED_FILES).write_text(json.dumps(deleted))
    return deleted


def apply_rootfs_diff(package: Path, rootfs: Path) -> None:
    """Bring a clone's root filesystem (its image, fresh) to where the source's was."""
    diff = package / ROOTFS_DIFF
    if diff.exists():
        with tarfile.open(diff) as tar:
            tar.extractall(rootfs, filter="fully_trusted")
    deleted = package / DELETED_FILES
    for relative in json.loads(deleted.read_text()) if deleted.exists() else []:
        path = rootfs / relative
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", str(path)], check=False)
        else:
            path.unlink(missing_ok=True)


def empty_dirs(config: dict) -> dict[str, Path]:
    """The pod's emptyDir volumes a container mounts: name -> the directory kubelet made
    (/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>)."""
    found = {}
    for mount in config.get("mounts") or []:
        source = Path(str(mount.get("source", "")))
        if source.parent.name == EMPTY_DIR:
            found[source.name] = source
    return found


def write_empty_dirs(config: dict, target: Path) -> list[str]:
    """Each emptyDir the container mounts, whole, as volumes/<name>.tar (read while the pod
    is frozen, so consistent with its memory)."""
    names = []
    for name, directory in sorted(empty_dirs(config).items()):
        (target / VOLUMES).mkdir(exist_ok=True)
        with tarfile.open(target / VOLUMES / f"{name}.tar", "w") as tar:
            tar.add(directory, arcname=".")
        names.append(name)
    return names


def apply_empty_dirs(package: Path, config: dict) -> list[str]:
    """Fill the clone's emptyDirs (made empty by kubelet) with what the source's held."""
    filled = []
    for name, directory in sorted(empty_dirs(config).items()):
        archive = package / VOLUMES / f"{name}.tar"
        if archive.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(directory, filter="fully_trusted")
            filled.append(name)
    return filled


class Containerd(Runc):
    """`ContainerRuntime` for containerd nodes (see the module's docstring)."""

    leaves_source_running = True
    restores_through_handler = True

    def __init__(
        self, *, cri_socket: Path, state_dir: Path, runc_root: Path, runc: str = "runc", criu: str = "criu"
    ) -> None:
        super().__init__(root=runc_root, runc=runc, criu=criu)
        self.cri_socket, self.state_dir = cri_socket, state_dir

    def node_problems(self) -> list[str]:
        """What this node lacks to take part in moves: containerd answering CRI, with CLM's
        runtime handler loaded (the install-node init container writes its config drop-in;
        containerd loads a new handler only when it restarts)."""
        try:
            with CriClient(self.cri_socket, timeout=10) as cri:
                handlers = cri.runtime_handlers()
        except CriError as exc:
            return [f"containerd at {self.cri_socket} does not answer CRI: {exc}"]
        if RESTORE_HANDLER not in handlers:
            return [
                f"containerd has no {RESTORE_HANDLER!r} runtime handler (it has {sorted(handlers)}): "
                "this node cannot restore clones; the checkpoint agent's install-node step writes the config "
                "drop-in, "
                "then containerd must be restarted to load it"
            ]
        return []

    def bundle(self, container_id: str) -> Path:
        return self.state_dir / TASKS / container_id

    def containers(self) -> list[Container]:
        with CriClient(self.cri_socket, timeout=30) as cri:
            try:
                listed = cri.list_containers()
                sandboxes = cri.list_pod_sandboxes()
            except CriError as exc:
                raise RuntimeCommandError(str(exc)) from None
        # A clone moved again is asked for by the UID its line's first pod had.
        first_uid = {sb.id: sb.annotations.get(names.RUNTIME_POD_UID, "") for sb in sandboxes}
        out = []
        for item in listed:
            labels = dict(item.labels)
            state = self.state(item.id)
            if state is None:
                continue  # a container without a task (created, exited): nothing to move
            out.append(
                Container(
                    id=item.id,
                    status=state,
                    pid=self.pid(item.id) or 0,
                    bundle=self.bundle(item.id),
                    annotations={
                        **{
                            k: labels[k]
                            for k in (POD_UID, POD_NAME, POD_NAMESPACE, CONTAINER_NAME)
                            if k in labels
                        },
                        names.RUNTIME_POD_UID: first_uid.get(item.pod_sandbox_id) or labels.get(POD_UID, ""),
                    },
                )
            )
        return out

    def pod_containers(self, pod_uid: str) -> list[Container]:
        return [
            c
            for c in self.containers()
            if pod_uid in (c.annotations.get(POD_UID), c.annotations.get(names.RUNTIME_POD_UID))
        ]

    def run(self, container_id: str, bundle: Path, **_: object) -> None:
        raise RuntimeCommandError("on containerd nodes kubelet starts containers, never the agent")

    # ----- the source: frozen, not ended -----

    def _netns(self, container_id: str) -> Path:
        netns = netns_of(json.loads((self.bundle(container_id) / "config.json").read_text()))
        if netns is None:
            raise RuntimeCommandError(f"container {container_id} has no network namespace of its own")
        return netns

    def _nft(self, netns: Path, *args: str, rules: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={netns}", "nft", *args],
            input=rules,
            capture_output=True,
            text=True,
            check=False,
        )

    def lock_network(self, container_id: str) -> None:
        netns = self._netns(container_id)
        self._nft(netns, "delete", "table", "inet", LOCK_TABLE)
        proc = self._nft(netns, "-f", "-", rules=LOCK_RULES)
        if proc.returncode != 0:
            raise RuntimeCommandError(f"locking the network of {container_id} failed: {proc.stderr.strip()}")

    def unlock_network(self, container_id: str) -> None:
        self._nft(self._netns(container_id), "delete", "table", "inet", LOCK_TABLE)

    def network_locked(self, container_id: str) -> bool:
        return self._nft(self._netns(container_id), "list", "table", "inet", LOCK_TABLE).returncode == 0

    def checkpoint(
        self, container_id: str, image_dir: Path, *, tcp_established: bool = True, parent: str | None = None
    ) -> CheckpointResult:
        """Lock the pod's network, freeze the container and dump it, leaving it frozen."""
        image_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.lock_network(container_id)
        if self.state(container_id) != "paused":
            self.pause(container_id)
        args = ["checkpoint", "--leave-running", f"--image-path={image_dir.resolve()}"]
        if tcp_established:
            args.append("--tcp-established")
        if parent:
            args.append(f"--parent-path={parent}")
        proc = self._run(*args, container_id)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeCommandError(
                f"checkpoint of {container_id} failed: {proc.stderr.strip()}\n"
                f"{self._dump_errors(image_dir)}"
            )
        size = sum(p.stat().st_size for p in image_dir.iterdir() if p.is_file())
        return CheckpointResult(image_dir, seconds, size)

    def checkpoint_lazy(
        self, container_id: str, image_dir: Path, *, leave_running: bool = True
    ) -> LazyCheckpoint:
        """Post-copy's dump, leaving the tasks frozen like `checkpoint`: CRIU serves their
        memory from the frozen container, and however its page-server session ends (closed,
        broken, every page taken) it puts back the frozen state it found. So the source is
        never lost before the commit: a rollback ends the session and thaws it. (Always left
        running here: kubelet would take an exit for a crash.)"""
        self.lock_network(container_id)
        if self.state(container_id) != "paused":
            self.pause(container_id)
        return super().checkpoint_lazy(container_id, image_dir, leave_running=True)

    @staticmethod
    def _dump_errors(image_dir: Path) -> str:
        return criu_log_tail(image_dir, "dump.log")

    def thaw(self, container_id: str) -> bool:
        """Roll a frozen source back: resumed, its network open again. False when there is
        no frozen container to resume (then it must come back from its images)."""
        state = self.state(container_id)
        if state not in ("paused", "running"):
            return False
        if state == "paused":
            self.resume(container_id)
        self.unlock_network(container_id)
        return True

    def finish_source(self, container_id: str) -> None:
        """The move is committed: the frozen copy stays as it is (network locked) until
        kubelet stops it with the source pod; ending it now would look like a crash to kubelet,
        which would start the container again from its image."""

    def package_rootfs(self, container: Container, target: Path) -> None:
        upper = overlay_upperdir(container.bundle / "rootfs", Path("/proc/self/mountinfo").read_text())
        if upper is None:
            raise RuntimeCommandError(
                f"container {container.name}: its root filesystem at {container.bundle / 'rootfs'} is not an "
                "overlay mount this agent can see (the agent needs the host's mounts: hostPID and the "
                "containerd state directory mounted with HostToContainer propagation)"
            )
        write_rootfs_diff(upper, target)
        write_empty_dirs(json.loads((container.bundle / "config.json").read_text()), target)
        write_config_dump(
            target, container_id=container.id, created=(container.bundle / "config.json").stat().st_mtime
        )

    def delete(self, container_id: str) -> None:
        """A clone the move gives up: killed through the shim's own runc state (kubelet sees
        its container exit; the clone pod is being deleted)."""
        self._run("kill", container_id, "KILL")
