"""Run a local CLM: one nats-server with JetStream, the Kubernetes API emulator (with the
Migration CRD installed; its kubeconfig in the state directory) and the five service PEXes.

The node agents run once per simulated node. Each process gets its own HTTP port and log
file under the state directory; `stop()` sends SIGTERM to every service (they drain and
exit) and then stops NATS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread, api_client

CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")

CLUSTER_SERVICES = ("labeler", "evictor-planner", "coordinator")
NODE_SERVICES = ("checkpoint-agent", "ip-handover-agent")


@dataclass
class Proc:
    service: str
    node: str | None
    log: Path
    popen: subprocess.Popen[bytes]
    # Where this process's output starts in `log` (a restarted service appends to it).
    log_offset: int = 0
    ready: bool = False
    detail: str = ""
    _port: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}@{self.node}" if self.node else self.service

    @property
    def port(self) -> int:
        """The HTTP port the service bound (it picks a free one and logs it first): no race
        with another process for a port chosen in advance. 0 until it has said."""
        if not self._port:
            with contextlib.suppress(OSError), self.log.open("rb") as out:
                out.seek(self.log_offset)
                for line in out:
                    if b'"http listening"' in line:
                        self._port = int(json.loads(line)["http_port"])
                        break
        return self._port

    def log_tail(self, lines: int = 12) -> str:
        with contextlib.suppress(OSError), self.log.open("rb") as out:
            out.seek(self.log_offset)
            return "\n".join(out.read().decode(errors="replace").splitlines()[-lines:])
        return ""


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    if not port:
        raise ConnectionRefusedError("the service has not said its port yet")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class LocalCluster:
    pex_dir: Path
    state_dir: Path
    nodes: list[str]
    nats_port: int | None = None
    # Extra environment: by service name, and for node services by node name.
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    node_env: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    nats: NatsServer | None = None
    kube: EmulatorThread | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def _start_kube(self) -> None:
        self.kube = EmulatorThread(state_file=self.state_dir / "kube-state.json").start()
        self.kubeconfig.write_text(kubeconfig_text(self.kube.url))
        try:
            client.ApiextensionsV1Api(api_client(self.kube.url)).create_custom_resource_definition(
                yaml.safe_load(CRD.read_text())
            )
        except ApiException as exc:
            if exc.status != 409:  # installed by an earlier run (the state file keeps it)
                raise

    def pex(self, service: str) -> Path:
        path = self.pex_dir / f"clm-{service}.pex"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: build the services with ./pants package ::")
        return path

    def start(self) -> None:
        for service in CLUSTER_SERVICES + NODE_SERVICES:
            self.pex(service)  # fail before starting anything
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        nats_dir = self.state_dir / "nats"
        nats_dir.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(port=self.nats_port, store_dir=str(nats_dir)).start()
        self._start_kube()
        for service in CLUSTER_SERVICES:
            self._spawn(service, None)
        for node in self.nodes:
            for service in NODE_SERVICES:
                self._spawn(service, node)

    def _spawn(self, service: str, node: str | None) -> None:
        assert self.nats is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CLM_NATS_URL": self.nats.url,
            "CLM_HTTP_HOST": "127.0.0.1",
            "CLM_HTTP_PORT": "0",
            "CLM_SHUTDOWN_GRACE_SECONDS": "5",
        }
        if node:
            env["CLM_NODE_NAME"] = node
        if service == "checkpoint-agent":
            # Several nodes' agents on one host: each its own state, images and port.
            env.update(
                {
                    "CLM_STATE_DIR": str(self.state_dir / "nodes" / str(node) / "checkpoint-agent"),
                    "CLM_IMAGE_DIR": str(self.state_dir / "nodes" / str(node) / "images"),
                    "CLM_RUNC_ROOT": str(self.state_dir / "nodes" / str(node) / "runc"),
                    "CLM_TRANSFER_PORT": "0",
                    "CLM_TRANSFER_LISTEN_HOST": "127.0.0.1",
                    "CLM_TRANSFER_ADVERTISE_HOST": "127.0.0.1",
                }
            )
        if service in CLUSTER_SERVICES:  # they read and write the cluster through its API
            env["CLM_KUBECONFIG"] = str(self.kubeconfig)
        if service == "ip-handover-agent":
            env["CLM_STATE_DIR"] = str(self.state_dir / "nodes" / str(node) / "ip-handover-agent")
        env.update(self.service_env.get(service, {}))
        if node:
            env.update(self.node_env.get(node, {}).get(service, {}))
        log = self.state_dir / "logs" / f"{service}{'@' + node if node else ''}.log"
        python = shutil.which("python3.11") or "python3"
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [python, str(self.pex(service))],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(Proc(service, node, log, popen, log_offset=offset))

    def wait_ready(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.ready:
                    continue
                if proc.popen.poll() is not None:
                    proc.detail = f"exited with {proc.popen.returncode}; see {proc.log}"
                    continue
                try:
                    status, body = http_get(proc.port, "/readyz")
                except OSError as exc:
                    proc.detail = f"not answering yet ({exc.__class__.__name__})"
                    continue
                proc.ready, proc.detail = status == 200, body.strip()
            if all(p.ready or p.popen.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        return all(p.ready for p in self.procs)

    def status_rows(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for proc in self.procs:
            metrics = ""
            if proc.popen.poll() is None:
                try:
                    metrics = http_get(proc.port, "/metrics")[1]
                except OSError:
                    metrics = ""
            rows.append(
                {
                    "service": proc.name,
                    "pid": str(proc.popen.pid),
                    "http": f"127.0.0.1:{proc.port}",
                    "ready": "yes" if proc.ready else "NO",
                    "nats_connected": "yes" if "clm_nats_connected 1.0" in metrics else "no",
                    "detail": proc.detail,
                }
            )
        return rows

    def restart(self, service: str, env: dict[str, str], timeout: float = 60.0) -> None:
        """Stop a cluster service (SIGTERM, drained) and start it again with `env` added to
        its environment; returns once it is ready."""
        old = [p for p in self.procs if p.service == service and p.node is None]
        if not old:
            raise ValueError(f"no cluster service {service!r} (have: {', '.join(CLUSTER_SERVICES)})")
        for proc in old:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
            self.procs.remove(proc)
        self.service_env[service] = {**self.service_env.get(service, {}), **env}
        self._spawn(service, None)
        new = self.procs[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if new.popen.poll() is not None:
                raise RuntimeError(f"{service} exited {new.popen.returncode}; see {new.log}")
            try:
                if http_get(new.port, "/readyz")[0] == 200:
                    new.ready = True
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{service} not ready within {timeout:.0f}s; see {new.log}")

    # ----- faults (tools/bench soak) -----

    def find(self, service: str, node: str | None = None) -> Proc:
        for proc in self.procs:
            if proc.service == service and proc.node == node:
                return proc
        raise ValueError(f"no {service}{'@' + node if node else ''} in this cluster")

    def kill(self, service: str, node: str | None = None) -> None:
        """SIGKILL a service and everything in its session, as a container's death would."""
        proc = self.find(service, node)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()

    def respawn(self, service: str, node: str | None = None, timeout: float = 60.0) -> Proc:
        """Start a service again after it died (as its Deployment or DaemonSet would)."""
        old = self.find(service, node)
        if old.popen.poll() is None:
            raise RuntimeError(f"{old.name} still runs")
        self.procs.remove(old)
        self._spawn(service, node)
        new = self.procs[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if new.popen.poll() is not None:
                raise RuntimeError(f"{new.name} exited {new.popen.returncode}; see {new.log}")
            try:
                if http_get(new.port, "/readyz")[0] == 200:
                    new.ready = True
                    return new
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{new.name} not ready within {timeout:.0f}s; see {new.log}")

    def restart_nats(self) -> None:
        """Stop and start nats-server on its port and store (JetStream keeps its streams)."""
        assert self.nats is not None
        self.nats.stop()
        self.nats.start()

    def restart_api(self) -> None:
        """Stop and start the API emulator on its port, from its state file."""
        assert self.kube is not None
        port = int(self.kube.url.rsplit(":", 1)[1])
        self.kube.stop()
        self.kube = EmulatorThread(state_file=self.state_dir / "kube-state.json", port=port).start()

    def stop(self) -> list[tuple[str, int | None]]:
        """SIGTERM every service, wait for each to drain; returns (name, exit code)."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
            codes.append((proc.name, proc.popen.returncode))
        if self.nats is not None:
            self.nats.stop()
        if self.kube is not None:
            self.kube.stop()
        return codes
