"""Node agents as real processes (PEX or `python -m`), one pair per node, for tests,
benchmarks and the sandbox; plus pod containers made the way the node runtime makes them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.certs import make_agent_cert, make_ca, write_agent_tls


def built_pex(service: str) -> Path | None:
    """Benchmarks run services from their own code (`python -m`) unless CLM_PEX_DIR names a
    directory of built PEXes that holds this one."""
    base = os.environ.get("CLM_PEX_DIR")
    path = Path(base, f"clm-{service}.pex") if base else None
    return path.resolve() if path is not None and path.is_file() else None


def http_port_from_log(log_path: Path, offset: int = 0) -> int:
    """The port a service bound for CLM_HTTP_PORT=0, from its "http listening" log line after
    `offset` (0: not yet). Ports chosen beforehand and handed over race parallel tests."""
    with log_path.open("rb") as log:
        log.seek(offset)
        for line in log:
            if b'"http listening"' in line:
                with contextlib.suppress(ValueError):
                    return int(json.loads(line).get("http_port", 0))
    return 0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# Settings a test's environment gives every agent it starts.
PASSED_ON = ("CLM_NATS_REQUEST_TIMEOUT_SECONDS",)


@dataclass
class AgentProcess:
    """One agent process. `pex` runs the packaged service; without it, its module."""

    service: str  # "checkpoint-agent" or "ip-handover-agent"
    node: str
    env: dict[str, str]
    pex: Path | None = None
    log_path: Path | None = None
    # The HTTP port it bound (it picks a free one: a port chosen here and handed over could
    # be taken by a parallel test in between); known once it has said so in its log.
    port: int = 0
    proc: subprocess.Popen | None = None
    _log_from: int = field(default=0, repr=False)

    def start(self) -> AgentProcess:
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix=f"clm-{self.service}-", suffix=".log")[1])
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.port = 0
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CLM_HTTP_HOST": "127.0.0.1",
            "CLM_HTTP_PORT": "0",
            "CLM_NODE_NAME": self.node,
            # In the pre-copy VM, the standard library comes from the guest's Python image.
            **({"PYTHONHOME": os.environ["PYTHONHOME"]} if "PYTHONHOME" in os.environ else {}),
            # Where this whole process tree runs slowly (the VM's emulated CPU), its agents too.
            **{k: os.environ[k] for k in PASSED_ON if k in os.environ},
            **self.env,
        }
        if self.pex is not None:
            python = shutil.which("python3.11") or sys.executable
            argv = [python, str(self.pex)]
        else:
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            argv = [sys.executable, "-m", f"services.{self.service.replace('-', '_')}.main"]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def _bound_port(self) -> int:
        assert self.log_path is not None
        return http_port_from_log(self.log_path, self._log_from)

    def wait_ready(self, timeout: float = 90) -> AgentProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
                raise RuntimeError(f"{self.service} for {self.node} exited {self.proc.returncode}:\n{tail}")
            if not self.port:
                self.port = self._bound_port()
            if self.port and _ready(self.port):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.service} for {self.node} not ready within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NodeAgents:
    """Both agents of one node in the test topology (a node is a network namespace)."""

    node: str
    node_netns: str
    workdir: Path
    nats_url: str
    # The cluster's agent TLS files (agent_tls_dir): every node's agent mounts the same ones.
    tls_dir: Path
    image_dir: Path
    pex_dir: Path | None = None
    # Extra settings for the checkpoint agent (e.g. CLM_LAZY_RESTORE=false).
    checkpoint_env: dict[str, str] = field(default_factory=dict)
    # Extra settings for the IP-handover agent (e.g. CLM_PODS_WIRED_BY_CNI=true).
    network_env: dict[str, str] = field(default_factory=dict)
    checkpoint: AgentProcess | None = None
    network: AgentProcess | None = None

    @property
    def runc_root(self) -> Path:
        return self.workdir / "runc"

    def _pex(self, service: str) -> Path | None:
        return self.pex_dir / f"clm-{service}.pex" if self.pex_dir else None

    def start(self) -> NodeAgents:
        self.workdir.mkdir(parents=True, exist_ok=True)
        common = {"CLM_NATS_URL": self.nats_url}
        self.checkpoint = AgentProcess(
            "checkpoint-agent",
            self.node,
            pex=self._pex("checkpoint-agent"),
            log_path=self.workdir / "checkpoint-agent.log",
            env={
                **common,
                "CLM_RUNC_ROOT": str(self.runc_root),
                "CLM_STATE_DIR": str(self.workdir / "state"),
                "CLM_IMAGE_DIR": str(self.image_dir),
                "CLM_TRANSFER_PORT": "0",
                "CLM_TRANSFER_LISTEN_HOST": "127.0.0.1",
                "CLM_TRANSFER_ADVERTISE_HOST": "127.0.0.1",
                "CLM_AGENT_TLS_DIR": str(self.tls_dir),
                # Held packets are sent again from the node's namespace.
                "CLM_NODE_NETNS": self.node_netns,
                **self.checkpoint_env,
            },
        ).start()
        self.network = AgentProcess(
            "ip-handover-agent",
            self.node,
            pex=self._pex("ip-handover-agent"),
            log_path=self.workdir / "ip-handover-agent.log",
            env={
                **common,
                "CLM_NODE_NETNS": self.node_netns,
                "CLM_UPLINK_INTERFACE": "eth0",
                "CLM_STATE_DIR": str(self.workdir / "network-state"),
                **self.network_env,
            },
        ).start()
        return self

    def wait_ready(self, timeout: float = 90) -> NodeAgents:
        assert self.checkpoint and self.network
        self.checkpoint.wait_ready(timeout)
        self.network.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for agent in (self.checkpoint, self.network):
            if agent is not None:
                agent.stop()


def agent_tls_dir(directory: Path) -> Path:
    """A fresh cluster agent CA and the agents' certificate, as the Secret clm-agent-tls holds
    them (ca.crt, tls.crt, tls.key), written to `directory`."""
    ca = make_ca()
    write_agent_tls(directory, ca, make_agent_cert(ca))
    return directory
