"""A whole CLM cluster on one machine: NATS JetStream, the Kubernetes API emulator, N nodes
(network namespaces on one segment, each with a real containerd 2.1 and CLM's restore
handler, both node agents and a kubelet stand-in that drives containerd over CRI) and the
labeler, evictor-planner and coordinator as separate processes.

`Sandbox.up()` starts it and writes `state.json` in the state directory (what `clm sandbox
status`, `clm events`, `clm migrate` read); `Sandbox.down()` removes everything it created.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from services.checkpoint_agent.certs import make_agent_cert, make_ca, write_agent_tls
from tests.kit import builders as b
from tests.kit.containerd_images import node_images
from tests.kit.containerd_node import BIN as CONTAINERD_BIN
from tests.kit.containerd_node import build_cni_shim, build_restore_handler, stop_leftover_containerds
from tools.kube_emulator.testing import api_client
from tools.local_cluster.cluster import LocalCluster
from tools.sandbox.kubelet_node import SOCKETS, KubeletNode
from tools.sandbox.topology import SUBNET, Topology, node_ip, node_pod_range, remove_leftovers

log = logging.getLogger("clm.sandbox")

DEFAULT_STATE_DIR = Path("/tmp/clm-sandbox")
REQUIRED_TOOLS = ("runc", "criu", "nsenter", "ip", "iptables", "nft", "nats-server", "gcc")


# One sandbox per machine: its namespaces and links have fixed names (remove_leftovers finds
# them by name), so a second one would tear down the first. Held by the sandbox's process.
MACHINE_LOCK = Path("/run/clm-sandbox.lock")


def take_machine_lock(state_dir: Path) -> int:
    """The machine's sandbox lock as an open descriptor (closing it releases the lock), or
    RuntimeError naming the sandbox that holds it."""
    fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(another_sandbox(machine_lock_holder() or {})) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "state_dir": str(state_dir)}).encode(), 0)
    return fd


def another_sandbox(holder: dict) -> str:
    """Why a second sandbox cannot start, and how to stop the first."""
    state_dir = holder.get("state_dir", "?")
    return (
        f"another sandbox runs on this machine (pid {holder.get('pid', '?')}, state dir {state_dir}): "
        f"one at a time — `clm sandbox down --state-dir {state_dir}` stops it"
    )


def machine_lock_holder() -> dict | None:
    """Who holds the machine's sandbox lock ({"pid", "state_dir"}), or None when nobody does."""
    try:
        fd = os.open(MACHINE_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(ValueError, OSError):
                return json.loads(os.pread(fd, 4096, 0) or b"{}")
            return {}
        return None
    finally:
        os.close(fd)


def missing_requirements() -> list[str]:
    problems = [f"{tool} is not installed" for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not (CONTAINERD_BIN / "containerd").exists():
        problems.append(f"containerd 2.1 is not in {CONTAINERD_BIN} (tools/setup/ensure-containerd)")
    if os.geteuid() != 0:
        problems.insert(0, "the sandbox needs root (network namespaces, runc, CRIU)")
    return problems


def read_state(state_dir: Path) -> dict | None:
    """The running sandbox's state.json, or None when no sandbox runs from `state_dir`."""
    path = state_dir / "state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    try:
        pid = int(state["pid"])
    except (ValueError, KeyError):
        return None
    return state if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; an exited process nobody has reaped yet (a zombie, e.g. under
    a subreaper) counts as gone."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass
class Sandbox:
    state_dir: Path = DEFAULT_STATE_DIR
    pex_dir: Path = Path("dist")
    node_count: int = 3
    nats_port: int | None = 4222
    planner_dry_run: bool = True
    topology: Topology | None = None
    cluster: LocalCluster | None = None
    runtimes: list[KubeletNode] = field(default_factory=list)
    machine_lock: int | None = None
    # More settings by service name (node agents: on every node), e.g. short leases for a soak.
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def nats_url(self) -> str:
        assert self.cluster is not None and self.cluster.nats is not None
        return self.cluster.nats.url

    def api(self) -> client.ApiClient:
        assert self.cluster is not None and self.cluster.kube is not None
        return api_client(self.cluster.kube.url)

    def up(self) -> bool:
        """Start everything; True when every service is ready."""
        problems = missing_requirements()
        if problems:
            raise RuntimeError("cannot start the sandbox: " + "; ".join(problems))
        existing = read_state(self.state_dir)
        if existing is not None:
            raise RuntimeError(
                f"a sandbox already runs from {self.state_dir} (pid {existing['pid']}): "
                "stop it with `clm sandbox down` first"
            )
        self.machine_lock = take_machine_lock(self.state_dir)
        self._clean_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The sandbox cluster's own agent CA and certificate (the Secret clm-agent-tls there).
        tls = self.state_dir / "agent-tls"
        ca = make_ca(common_name="clm-sandbox-agent-ca")
        write_agent_tls(tls, ca, make_agent_cert(ca))
        self.topology = Topology.create(self.node_count)
        nodes = list(self.topology.nodes)
        if self.nats_port is not None and not _port_free(self.nats_port):
            self.nats_port = None  # nats-server picks a free one
        # Each node's containerd first: its agents talk to it from their start.
        handler = build_restore_handler(self.state_dir / "bin" / "clm-runc")
        cni_shim = build_cni_shim(self.state_dir / "bin" / "clm-cni")
        images = node_images()
        for index, (node, ns) in enumerate(self.topology.nodes.items(), start=1):
            self.runtimes.append(
                KubeletNode(
                    node=node,
                    node_netns=ns.name,
                    workdir=self.state_dir / "nodes" / node / "kubelet-node",
                    cni_shim=cni_shim,
                    kubeconfig=self.kubeconfig,
                    address_range=node_pod_range(index),
                    subnet=f"{SUBNET}.0/24",
                    restore_binary=handler,
                    image_tars=images,
                ).start_runtime()
            )
        node_env = {
            runtime.node: {
                "ip-handover-agent": {
                    "CLM_NODE_NETNS": runtime.node_netns,
                    "CLM_UPLINK_INTERFACE": "eth0",
                    "CLM_PODS_WIRED_BY_CNI": "true",
                    # It serves the node's clm-cni, reading pods through the API.
                    "CLM_CNI_SOCKET": str(runtime.cni_socket),
                    "CLM_KUBECONFIG": str(self.kubeconfig),
                },
                "checkpoint-agent": {
                    "CLM_AGENT_TLS_DIR": str(tls),
                    "CLM_NODE_NETNS": runtime.node_netns,
                    **runtime.agent_env(),
                },
            }
            for runtime in self.runtimes
        }
        self.cluster = LocalCluster(
            pex_dir=self.pex_dir,
            state_dir=self.state_dir,
            nodes=nodes,
            nats_port=self.nats_port,
            service_env={
                "coordinator": {
                    "CLM_COMPATIBILITY_PROFILE": "generic",
                    "CLM_RESYNC_SECONDS": "0.5",
                    **self.extra_env.get("coordinator", {}),
                },
                "evictor-planner": {
                    "CLM_COMPATIBILITY_PROFILE": "generic",
                    "CLM_DRY_RUN": "true" if self.planner_dry_run else "false",
                    **self.extra_env.get("evictor-planner", {}),
                },
                "labeler": self.extra_env.get("labeler", {}),
                # Node agents: on every node (node_env adds each node's own).
                "checkpoint-agent": self.extra_env.get("checkpoint-agent", {}),
                "ip-handover-agent": self.extra_env.get("ip-handover-agent", {}),
            },
            node_env=node_env,
        )
        self.cluster.start()
        api = self.api()
        core = client.CoreV1Api(api)
        for index, node in enumerate(nodes, start=1):
            register_node(core, node, node_ip(index))
        for runtime in self.runtimes:
            runtime.start(api)
        ready = self.cluster.wait_ready()
        self._write_state()
        return ready

    def _write_state(self) -> None:
        assert self.cluster is not None and self.topology is not None and self.cluster.kube is not None
        state = {
            "pid": os.getpid(),
            "started": time.time(),
            "nats_url": self.nats_url,
            "kube_url": self.cluster.kube.url,
            "kubeconfig": str(self.kubeconfig),
            "nodes": {node: ns.name for node, ns in self.topology.nodes.items()},
            "client_netns": self.topology.client.name,
            "services": [
                {"name": p.name, "pid": p.popen.pid, "port": p.port, "log": str(p.log)}
                for p in self.cluster.procs
            ],
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.rename(self.state_dir / "state.json")

    def _clean_state_dir(self) -> None:
        """What an earlier run left: containerd and its shims, runc containers, namespaces, its
        state (logs are kept)."""
        stop_leftover_containerds(self.state_dir / "nodes", SOCKETS)
        for runc_root in self.state_dir.glob("nodes/*/runc"):
            delete_all_containers(runc_root)
        remove_leftovers()
        for name in ("nodes", "nats", "kube-state.json", "state.json", "kubeconfig", "demo"):
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for old in self.state_dir.glob("logs/*.log"):
            old.unlink()

    def down(self) -> list[tuple[str, int | None]]:
        """Stop every process and remove every container, namespace, veth and state file."""
        if self.machine_lock is None:
            return []  # up() never got the machine: what runs belongs to another sandbox
        (self.state_dir / "state.json").unlink(missing_ok=True)
        for runtime in self.runtimes:
            runtime.stop()
        codes = self.cluster.stop() if self.cluster is not None else []
        for runtime in self.runtimes:
            try:
                runtime.remove_everything()
            except Exception:  # - the namespace sweep below removes what is left
                log.exception("removing the pods of %s failed", runtime.node)
        stop_leftover_containerds(self.state_dir / "nodes", SOCKETS)
        shutil.rmtree(SOCKETS, ignore_errors=True)
        for runc_root in self.state_dir.glob("nodes/*/runc"):
            delete_all_containers(runc_root)
        if self.topology is not None:
            self.topology.delete()
        remove_leftovers()
        for name in ("nodes", "nats", "kube-state.json", "agent-tls", "kubeconfig"):
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        os.close(self.machine_lock)
        self.machine_lock = None
        return codes


def register_node(core: client.CoreV1Api, node: str, address: str) -> None:
    """What kubelet does at start: the Node object, then its status (a subresource)."""
    obj = b.node(
        node, cpu="2", memory="4Gi", instance_type="sandbox", zone="sandbox-1", migration_enabled=False
    )
    status = obj.pop("status")
    core.create_node(obj)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status["capacity"] = dict(status["allocatable"])
    status["nodeInfo"].update(
        machineID=node,
        systemUUID=node,
        bootID=node,
        kernelVersion=os.uname().release,
        kubeProxyVersion="",
        operatingSystem="linux",
    )
    status["conditions"] = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "message": "the sandbox's kubelet stand-in is running",
        }
    ]
    status["addresses"] = [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": node}]
    core.patch_node_status(node, {"status": status})


def delete_all_containers(runc_root: Path) -> None:
    listed = subprocess.run(
        ["runc", f"--root={runc_root}", "list", "-q"], capture_output=True, text=True, check=False
    ).stdout.split()
    for cid in listed:
        subprocess.run(
            ["runc", f"--root={runc_root}", "delete", "--force", cid], capture_output=True, check=False
        )


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
