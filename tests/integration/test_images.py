"""The five service images, as `pants package ::` builds them, started with the docker SDK
the way the kustomize manifests run them: NATS in a container, the cluster services as an
unprivileged user on a read-only root filesystem, the node agents privileged (the checkpoint
agent in the host's PID namespace), all on the host network, against the Kubernetes API
emulator. Every container must become ready, and the images must work together: the
checkpoint agent's CRIU probe (CRIU 4.2 in its image) reaches the labeler over NATS, which
labels the node.

dockerd and the base images come from tools/setup/ensure-docker (tools/test runs it)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml
from docker.models.containers import Container
from kubernetes import client

from clm.policy import names
from tests.integration.support import http_get
from tests.kit import builders as b
from tests.kit.agents import agent_tls_dir
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread, api_client

TAG = "0.1.0"
CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")
NODE = "images-node-1"
SERVICES = ["labeler", "evictor-planner", "coordinator", "checkpoint-agent", "ip-handover-agent"]


CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE"
).split()


def privileged() -> dict[str, object]:
    """What the DaemonSets' `privileged: true` means, on this machine: Docker's --privileged
    grants every capability, and fails where the machine itself lacks one (these test
    machines run without CAP_SYS_RESOURCE); then every capability the machine has, with
    seccomp and AppArmor lifted and /proc/sys writable (no masked or read-only paths), as
    --privileged and Kubernetes' privileged containers have it: `criu check` needs to write
    /proc/sys/kernel/ns_last_pid, and failed on the read-only one, so the node went unlabeled."""
    bounding = int(Path("/proc/self/status").read_text().split("CapBnd:")[1].split()[0], 16)
    have = [name for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]
    if len(have) == len(CAPABILITIES):
        return {"privileged": True}
    # Docker 20.10 (Debian 12's) does not know the three newest; CAP_SYS_ADMIN covers them.
    have = [name for name in have if name not in ("PERFMON", "BPF", "CHECKPOINT_RESTORE")]
    return {
        "cap_add": have,
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        # docker's `--security-opt systempaths=unconfined`, which the CLI turns into these two.
        "unmasked_system_paths": True,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def docker_client() -> docker.DockerClient:
    try:
        docker_api = docker.from_env()
        docker_api.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"dockerd is not reachable ({exc}): run tools/setup/ensure-docker (as root) to start it")
    missing = []
    for image in [f"clm/{s}:{TAG}" for s in SERVICES] + ["clm-nats:bookworm"]:
        try:
            docker_api.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    assert not missing, f"images missing: {missing}; run tools/setup/ensure-docker and ./pants package ::"
    return docker_api


@dataclass
class Run:
    docker: docker.DockerClient
    tmp: Path
    label: str = field(default_factory=lambda: f"clm-images-test-{uuid.uuid4().hex[:8]}")
    containers: dict[str, Container] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, image: str, **kwargs: Any) -> Container:
        if kwargs.pop("unmasked_system_paths", False):
            container = self._start_unmasked(name, image, **kwargs)
        else:
            container = self.docker.containers.run(
                image,
                name=f"{self.label}-{name}",
                labels={self.label: name},
                network_mode="host",
                detach=True,
                **kwargs,
            )
        self.containers[name] = container
        return container

    def _start_unmasked(self, name: str, image: str, **kwargs: Any) -> Container:
        """As `start`, with no masked or read-only /proc paths (the SDK has no such option,
        so the container is made through the low-level API with the two fields set)."""
        api = self.docker.api
        volumes: dict[str, dict[str, str]] = kwargs.pop("volumes", {})
        host_config = api.create_host_config(
            network_mode="host",
            binds={source: {"bind": v["bind"], "mode": v["mode"]} for source, v in volumes.items()},
            pid_mode=kwargs.pop("pid_mode", None),
            cap_add=kwargs.pop("cap_add", None),
            security_opt=kwargs.pop("security_opt", None),
        )
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
        created = api.create_container(
            image,
            name=f"{self.label}-{name}",
            labels={self.label: name},
            environment=kwargs.pop("environment", None),
            volumes=[v["bind"] for v in volumes.values()],
            host_config=host_config,
            detach=True,
        )
        assert not kwargs, f"not passed on: {sorted(kwargs)}"
        api.start(created["Id"])
        return self.docker.containers.get(created["Id"])

    def logs(self, name: str) -> str:
        container = self.containers[name]
        container.reload()
        return f"--- {name} ({container.status}):\n{container.logs(tail=40).decode(errors='replace')}"

    def wait_ready(self, name: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            container = self.containers[name]
            container.reload()
            if container.status == "exited":
                raise AssertionError(f"{name} exited\n{self.logs(name)}")
            try:
                if http_get(self.ports[name], "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{name} not ready within {timeout}s\n{self.logs(name)}")

    def remove_all(self) -> None:
        for container in self.docker.containers.list(all=True, filters={"label": self.label}):
            container.remove(force=True)


@pytest.fixture
def run(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Run]:
    r = Run(docker_client, tmp_path)
    try:
        yield r
    finally:
        r.remove_all()


@pytest.fixture
def node_netns() -> Iterator[str]:
    """The IP-handover agent's stand-in node network (its uplink), so the test never
    changes the host's own interfaces."""
    name = f"clm-img-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(
        ["ip", "-n", name, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"], check=True
    )
    subprocess.run(["ip", "-n", name, "link", "set", "uplink0", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_every_image_becomes_ready_and_they_work_together(run: Run, node_netns: str) -> None:
    emulator = EmulatorThread().start()
    try:
        api = api_client(emulator.url)
        client.ApiextensionsV1Api(api).create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
        core = client.CoreV1Api(api)
        core.create_node(b.node(NODE))
        kubeconfig = run.tmp / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(emulator.url))
        kubeconfig.chmod(0o644)  # read by the images' unprivileged user

        nats_port = free_port()
        run.start(
            "nats",
            "clm-nats:bookworm",
            command=["nats-server", "-js", "-sd", "/data", "-a", "127.0.0.1", "-p", str(nats_port)],
            tmpfs={"/data": ""},
        )
        common = {"CLM_NATS_URL": f"nats://127.0.0.1:{nats_port}", "CLM_LOG_LEVEL": "INFO"}
        kube = {"CLM_KUBECONFIG": "/etc/clm/kubeconfig"}
        kube_mount = {str(kubeconfig): {"bind": "/etc/clm/kubeconfig", "mode": "ro"}}
        # As the Deployments run them: non-root, read-only root filesystem, no capabilities.
        locked_down = {
            "read_only": True,
            "tmpfs": {"/tmp": ""},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        for name in SERVICES:
            run.ports[name] = free_port()
        extra = {
            "labeler": {"CLM_NODE_CHECK_SECONDS": "1"},
            "evictor-planner": {"CLM_DRY_RUN": "true", "CLM_INTERVAL_SECONDS": "5"},
            "coordinator": {},
        }
        for name, env in extra.items():
            run.start(
                name,
                f"clm/{name}:{TAG}",
                environment={**common, **kube, **env, "CLM_HTTP_PORT": str(run.ports[name])},
                volumes=kube_mount,
                **locked_down,
            )
        # As the DaemonSets run them: privileged, host network (and PID for CRIU), netns mounted.
        netns_mount = {"/var/run/netns": {"bind": "/var/run/netns", "mode": "rw"}}
        run.start(
            "checkpoint-agent",
            f"clm/checkpoint-agent:{TAG}",
            environment={
                **common,
                "CLM_NODE_NAME": NODE,
                "CLM_HTTP_PORT": str(run.ports["checkpoint-agent"]),
                "CLM_TRANSFER_PORT": "0",
                "CLM_TRANSFER_ADVERTISE_HOST": "127.0.0.1",
                "CLM_AGENT_TLS_DIR": "/etc/clm/agent-tls",
                "CLM_CAPABILITIES_INTERVAL_SECONDS": "2",
            },
            pid_mode="host",
            **privileged(),
            volumes={
                **netns_mount,
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                # As the DaemonSet mounts the Secret clm-agent-tls.
                str(agent_tls_dir(run.tmp / "agent-tls")): {"bind": "/etc/clm/agent-tls", "mode": "ro"},
            },
        )
        run.start(
            "ip-handover-agent",
            f"clm/ip-handover-agent:{TAG}",
            environment={
                **common,
                "CLM_NODE_NAME": NODE,
                "CLM_HTTP_PORT": str(run.ports["ip-handover-agent"]),
                "CLM_NODE_NETNS": node_netns,
                "CLM_UPLINK_INTERFACE": "uplink0",
            },
            volumes=netns_mount,
            **privileged(),
        )

        for name in SERVICES:
            run.wait_ready(name)

        # The images' contents where it matters: CRIU 4.2 in the checkpoint agent's, and the
        # cluster services really run as the unprivileged user.
        code, out = run.containers["checkpoint-agent"].exec_run(["criu", "--version"])
        assert code == 0 and out.decode().startswith("Version: 4.2"), out
        for name in extra:
            code, out = run.containers[name].exec_run(["id", "-u"])
            assert out.decode().strip() == "65532", f"{name} runs as uid {out.decode().strip()}"

        # Together: the agent's probe -> NATS -> the labeler -> the node's label in the API.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            labels = core.read_node(NODE).metadata.labels or {}
            if labels.get(names.MIGRATION_ENABLED) == "true":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(
                f"node {NODE} never labeled {names.MIGRATION_ENABLED}=true\n"
                + run.logs("labeler")
                + "\n"
                + run.logs("checkpoint-agent")
            )
    finally:
        emulator.stop()
