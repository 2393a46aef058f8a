"""A real containerd 2.1 as one node's container runtime: its own root, state, socket, runc
root and CNI configuration, running in the node's network namespace (as on a node, where
containerd runs in the host's). Tests and the sandbox drive it over CRI, as kubelet does.

containerd is the one tools/setup/ensure-containerd unpacks beside the system's 1.6 (which
docker.io runs on). Shims outlive containerd by design; `stop` ends this node's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clm.runtime.cri.client import CriClient, CriError
from services.checkpoint_agent import node_install

CONTAINERD_DIR = Path(os.environ.get("CLM_CONTAINERD_DIR", "/opt/clm/containerd-2.1"))
BIN = CONTAINERD_DIR / "usr" / "bin"
REFERENCE_CNI = Path("/usr/lib/cni")
# The RuntimeClass handler clone pods use (deploy/kustomize ships the RuntimeClass).
RESTORE_HANDLER = "clm-restore"
SANDBOX_IMAGE = "localhost/clm-pause:1"


HANDLER_SOURCE = (
    Path(__file__).resolve().parents[2] / "services" / "checkpoint_agent" / "restore_handler" / "clm-runc.c"
)


CNI_SHIM_SOURCE = (
    Path(__file__).resolve().parents[2] / "services" / "ip_handover_agent" / "cni_shim" / "clm-cni.c"
)


def _build_static(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["gcc", "-O2", "-Wall", "-static", "-o", str(target), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {source} failed (gcc: tools/setup/install-system-deps): {proc.stderr}")
    return target


def build_restore_handler(target: Path) -> Path:
    """clm-runc, compiled static (as the DaemonSet installs it on a node)."""
    return _build_static(HANDLER_SOURCE, target)


def build_cni_shim(target: Path) -> Path:
    """The node's clm-cni (static C: it hands each call to the IP-handover agent), as the
    IP-handover agent's DaemonSet installs it."""
    return _build_static(CNI_SHIM_SOURCE, target)


def containerd_config(
    *,
    root: Path,
    state: Path,
    socket: Path,
    runc_root: Path,
    cni_bin: Path,
    cni_conf: Path,
    imports: list[str] | None = None,
) -> str:
    """containerd's config (version 3) for a node: CRI with runc; CLM's restore handler comes
    in a drop-in the checkpoint agent's install-node writes (`imports`), as on a real node.

    `restrict_oom_score_adj`: kubelet asks for negative OOM scores (the pause container
    -998), which need CAP_SYS_RESOURCE; where containerd runs without it (these machines),
    containerd keeps the scores at or above its own instead of failing every pod."""
    runc = {"BinaryName": "runc", "Root": str(runc_root)}
    runtimes: dict[str, Any] = {"runc": {"runtime_type": "io.containerd.runc.v2", "options": runc}}
    lines = [
        "version = 3",
        f"imports = {json.dumps(imports or [])}",
        f"root = {json.dumps(str(root))}",
        f"state = {json.dumps(str(state))}",
        "[grpc]",
        f"  address = {json.dumps(str(socket))}",
        "[ttrpc]",
        f"  address = {json.dumps(str(socket) + '.ttrpc')}",
        '[plugins."io.containerd.cri.v1.images"]',
        '  snapshotter = "overlayfs"',
        '  [plugins."io.containerd.cri.v1.images".pinned_images]',
        f"    sandbox = {json.dumps(SANDBOX_IMAGE)}",
        '[plugins."io.containerd.cri.v1.runtime"]',
        "  restrict_oom_score_adj = true",
        '  [plugins."io.containerd.cri.v1.runtime".cni]',
        f"    bin_dirs = {json.dumps([str(cni_bin), str(REFERENCE_CNI)])}",
        f"    conf_dir = {json.dumps(str(cni_conf))}",
        '  [plugins."io.containerd.cri.v1.runtime".containerd]',
        '    default_runtime_name = "runc"',
    ]
    for name, runtime in runtimes.items():
        table = f'[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{json.dumps(name)}]'
        lines += [f"    {table}", f"      runtime_type = {json.dumps(runtime['runtime_type'])}"]
        lines.append(f"      [{table[1:-1]}.options]")
        lines += [f"        {k} = {json.dumps(v)}" for k, v in runtime["options"].items()]
    lines += [
        '[plugins."io.containerd.grpc.v1.cri"]',
        "  disable_tcp_service = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
    ]
    return "\n".join(lines) + "\n"


def routed_cni_conf(
    *, node: str, pod_cidr: str, first: str, last: str, workdir: Path, kubeconfig: str
) -> dict:
    """clm-cni in routed mode with host-local addresses from first..last."""
    return {
        "cniVersion": "1.0.0",
        "name": "clm-pods",
        "type": "clm-cni",
        "routed": {"node": node, "uplink": "eth0"},
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr, "rangeStart": first, "rangeEnd": last}]],
            "dataDir": str(workdir / "ipam"),
        },
        "stateDir": str(workdir / "cni-state"),
        "kubeconfig": kubeconfig,
    }


@dataclass
class ContainerdNode:
    name: str
    netns: str
    workdir: Path
    cni_plugin: list[str]
    cni: dict[str, Any]
    restore_binary: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Where clm-cni runs: on these machines the API emulator listens in the host's namespace,
    # not the node's, so the plugin is entered there and wires the node side by `nodeNetns`.
    cni_netns: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # Where the sockets go when the workdir's path is too long for one (108 bytes at most).
    socket_dir: Path | None = None

    @property
    def socket(self) -> Path:
        return (self.socket_dir or self.workdir) / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        """runc's state root for containerd's k8s.io namespace (runc option `Root` + namespace)."""
        return self.workdir / "runc" / "k8s.io"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    def bundle(self, container_id: str) -> Path:
        return self.state / "io.containerd.runtime.v2.task" / "k8s.io" / container_id

    def start(self, *, timeout: float = 30) -> ContainerdNode:
        if not (BIN / "containerd").exists():
            raise RuntimeError(f"{BIN / 'containerd'} is missing: run tools/setup/ensure-containerd as root")
        cni_bin, cni_conf = self.workdir / "cni-bin", self.workdir / "cni-conf"
        for d in (cni_bin, cni_conf, self.workdir / "runc", self.socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        plugin = cni_bin / "clm-cni"
        plugin.write_text(
            "#!/bin/sh\n"
            f"export PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))}\n"
            + (f"exec nsenter --net={shlex.quote(str(self.cni_netns))} " if self.cni_netns else "exec ")
            + f"{' '.join(shlex.quote(a) for a in self.cni_plugin)}\n"
        )
        plugin.chmod(0o755)
        (cni_conf / "10-clm.conf").write_text(json.dumps(self.cni))
        config = self.workdir / "config.toml"
        dropins = self.workdir / "conf.d"
        config.write_text(
            containerd_config(
                root=self.workdir / "root",
                state=self.state,
                socket=self.socket,
                runc_root=self.workdir / "runc",
                cni_bin=cni_bin,
                cni_conf=cni_conf,
                imports=[f"{dropins}/*.toml"],
            )
        )
        if self.restore_binary is not None:
            # What the checkpoint agent's DaemonSet does on a node (its install-node step).
            done = node_install.install(
                binary=self.restore_binary,
                binary_target=self.workdir / "bin" / "clm-runc",
                containerd_config=config,
                dropin_dir=dropins,
            )
            if done.problems:
                raise RuntimeError(f"install-node on {self.name}: {done.problems}")
        # containerd finds its shim on PATH: 2.1's, not the system's 1.6.
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}", **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{self.netns}",
                    str(BIN / "containerd"),
                    "--config",
                    str(config),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd of {self.name} exited: {self.log_tail()}")
            if self.socket.exists():
                with contextlib.suppress(CriError), self.cri() as cri:
                    cri.version()
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"containerd of {self.name} did not answer CRI in {timeout}s: {self.log_tail()}"
                )
            time.sleep(0.05)

    def cri(self) -> CriClient:
        return CriClient(self.socket)

    def import_image(self, tar: Path) -> None:
        proc = subprocess.run(
            [str(BIN / "ctr"), "--address", str(self.socket), "-n", "k8s.io", "images", "import", str(tar)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"importing {tar} into {self.name}'s containerd failed: {proc.stderr.strip()}")

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def remove_all_pods(self) -> None:
        """What kubelet does when every pod leaves the node: stop and remove each sandbox."""
        with self.cri() as cri:
            for sandbox in cri.list_pod_sandboxes():
                with contextlib.suppress(CriError):
                    cri.stop_pod_sandbox(sandbox.id)
                with contextlib.suppress(CriError):
                    cri.remove_pod_sandbox(sandbox.id)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(CriError, OSError):
                self.remove_all_pods()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._unmount_all()

    def shims(self) -> list[int]:
        """This node's shims (they serve containers with containerd gone, as on a node)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if (
                    argv
                    and argv[0].endswith(b"containerd-shim-runc-v2")
                    and str(self.socket).encode() in argv
                ):
                    found.append(int(entry.name))
        return found

    def _unmount_all(self) -> None:
        prefix = str(self.workdir.resolve()) + "/"
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)
        ]
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def stop_leftover_containerds(*under: Path) -> None:
    """What a killed run left under these directories: its containerds and their shims (found
    by their configs' and sockets' paths), then its mounts."""
    prefixes = tuple(str(d.resolve()).encode() + b"/" for d in under)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            names = (b"containerd", b"containerd-shim-runc-v2")
            if argv and argv[0].rsplit(b"/", 1)[-1] in names and any(a.startswith(prefixes) for a in argv):
                os.kill(int(entry.name), signal.SIGKILL)
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].encode().startswith(prefixes)
    ]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
