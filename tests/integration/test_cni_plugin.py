"""The clm-cni plugin run the way a container runtime runs it: CNI_* environment variables,
the network configuration on stdin, in the host's network namespace (where the runtime
runs it, and where the API is reachable), with Debian's real bridge and host-local plugins
as the primary, or in routed mode with the real static IPAM plugin (as the sandbox's node
runtime runs it); pods read from the Kubernetes API emulator through the official client.
The test's bridge has a name of its own and is removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from services.ip_handover_agent import cni
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.integration.support import pex_dir
from tests.kit.netns import NetNS, ip, remove_stale
from tools.kube_emulator.testing import api_client, running_emulator

PRIMARY_DIR = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (PRIMARY_DIR / "bridge").exists(),
    reason="needs root and Debian's containernetworking-plugins (tools/setup/install-system-deps)",
)
SUBNET = "10.216.0.0/24"


@dataclass
class Env:
    bridge: str
    bin_dir: Path
    state: Path
    kubeconfig: Path
    core: client.CoreV1Api

    def conf(self, **extra: object) -> dict:
        return {
            "cniVersion": "1.0.0",
            "name": "pods",
            "type": "clm-cni",
            "kubeconfig": str(self.kubeconfig),
            "stateDir": str(self.state / "clm"),
            "delegate": {
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(self.state / "ipam")},
            },
            **extra,
        }

    def run(
        self,
        command: str,
        *,
        pod: tuple[str, str] | None = None,
        netns: NetNS | None = None,
        container: str = "c1",
        conf: dict | None = None,
        uid: str | None = None,
    ) -> tuple[int, dict | None]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.bin_dir}:{PRIMARY_DIR}",
        }
        if netns is not None:
            env["CNI_NETNS"] = str(netns.path)
        if pod is not None:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
            if uid is not None:
                env["CNI_ARGS"] += f";K8S_POD_UID={uid}"
        proc = subprocess.run(
            [str(self.bin_dir / "clm-cni")],
            input=json.dumps(conf or self.conf()),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, out

    def pod(
        self,
        namespace: str,
        name: str,
        *,
        ip: str | None = None,
        restores: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> str:
        body = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {
                    **({cni.RESTORE_ANNOTATION: restores} if restores else {}),
                    **(annotations or {}),
                },
            },
            "spec": {"containers": [{"name": "app", "image": "host"}]},
        }
        created = self.core.create_namespaced_pod(namespace, body)
        if ip:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": {"podIP": ip}})
        return created.metadata.uid


def _plugin_executable(bin_dir: Path) -> Path:
    """`clm-cni` in a CNI bin directory: the PEX where Pants built it, else the module."""
    built = pex_dir()
    plugin = bin_dir / "clm-cni"
    python = shutil.which("python3.11") or sys.executable
    if built is not None and (built / "clm-cni.pex").is_file():
        target = f'exec {python} {built / "clm-cni.pex"} "$@"'
    else:
        path = os.pathsep.join(p for p in sys.path if p)
        target = f'PYTHONPATH={path} exec {sys.executable} -m {cni.__name__} "$@"'
    plugin.write_text(f"#!/bin/sh\n{target}\n")
    plugin.chmod(0o755)
    return plugin


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    remove_stale("clm-cni-")
    suffix = str(os.getpid())[-5:]
    bridge = f"clmbr{suffix}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _plugin_executable(bin_dir)
    kubeconfig = tmp_path / "kubeconfig"
    with running_emulator(kubeconfig=kubeconfig) as emulator:
        core = client.CoreV1Api(api_client(emulator.url))
        core.create_namespace({"metadata": {"name": "games"}})
        try:
            yield Env(bridge, bin_dir, tmp_path / "state", kubeconfig, core)
        finally:
            ip("link", "del", bridge, check=False)
            remove_stale("clm-cni-")


def pod_netns(name: str) -> NetNS:
    return NetNS(f"clm-cni-{name}-{uuid.uuid4().hex[:6]}").create()


def addresses(ns: NetNS) -> str:
    return ip("-n", ns.name, "-br", "addr", "show", "eth0").stdout


def test_version(env: Env) -> None:
    code, out = env.run("VERSION")
    assert code == 0 and out is not None and "1.0.0" in out["supportedVersions"]


def test_a_normal_pod_goes_through_the_primary_plugin(env: Env) -> None:
    env.pod("games", "lobby-0")
    ns = pod_netns("lobby")
    code, out = env.run("ADD", pod=("games", "lobby-0"), netns=ns)
    assert code == 0, out
    assert out is not None
    address = out["ips"][0]["address"]
    assert address.startswith("10.216.0.") and address.endswith("/24"), out  # host-local's choice
    assert address in addresses(ns)
    assert ip("link", "show", env.bridge, check=False).returncode == 0  # the primary's bridge
    code, out = env.run("CHECK", pod=("games", "lobby-0"), netns=ns, conf=env.conf(prevResult=out))
    assert code == 0, out
    code, out = env.run("DEL", pod=("games", "lobby-0"), netns=ns)
    assert code == 0, out
    assert list((env.state / "ipam" / "pods").glob("10.216.0.*")) == []  # released by host-local


def test_a_restored_pod_gets_the_ip_of_the_pod_it_restores(env: Env) -> None:
    source_uid = env.pod("games", "mc-0", ip="10.216.0.77")
    env.pod("games", "mc-0-clone-1", restores="games/mc-0")
    ns = pod_netns("clone")
    code, out = env.run("ADD", pod=("games", "mc-0-clone-1"), netns=ns, container="clone1")
    assert code == 0, out
    assert out is not None and out["ips"][0]["address"] == "10.216.0.77/32"
    assert "10.216.0.77/32" in addresses(ns)
    veth = cni.host_veth(source_uid)  # the name the IP-handover agent's commit announces on
    assert ip("link", "show", veth, check=False).returncode == 0
    # Not allocated from the primary's range, and not announced: no route to it yet.
    assert not (env.state / "ipam" / "pods" / "10.216.0.77").exists()
    assert "10.216.0.77" not in ip("route").stdout
    assert env.run("CHECK", pod=("games", "mc-0-clone-1"), netns=ns, container="clone1")[0] == 0
    code, out = env.run("DEL", pod=("games", "mc-0-clone-1"), netns=ns, container="clone1")
    assert code == 0, out
    assert ip("link", "show", veth, check=False).returncode != 0


def test_a_statefulset_namesake_gets_the_ip_its_clone_spec_carries(env: Env) -> None:
    """Its source object is gone: `cast.ai/restore` names the namesake itself, which has no IP
    yet, so the IP and the runtime UID come from the clone's own annotations."""
    env.pod(
        "games",
        "db-0",
        restores="games/db-0",
        annotations={
            cni.RESTORE_POD_IP_ANNOTATION: "10.216.0.78",
            cni.RUNTIME_POD_UID_ANNOTATION: "uid-of-the-first-db-0",
        },
    )
    ns = pod_netns("namesake")
    code, out = env.run("ADD", pod=("games", "db-0"), netns=ns, container="namesake1")
    assert code == 0, out
    assert out is not None and out["ips"][0]["address"] == "10.216.0.78/32"
    assert "10.216.0.78/32" in addresses(ns)
    veth = cni.host_veth("uid-of-the-first-db-0")
    assert ip("link", "show", veth, check=False).returncode == 0
    code, out = env.run("DEL", pod=("games", "db-0"), netns=ns, container="namesake1")
    assert code == 0, out
    assert ip("link", "show", veth, check=False).returncode != 0


def test_clear_errors(env: Env) -> None:
    env.pod("games", "ghost")  # no IP
    env.pod("games", "ghost-clone-1", restores="games/ghost")
    ns = pod_netns("ghost")
    code, out = env.run("ADD", pod=("games", "ghost-clone-1"), netns=ns)
    assert code == 1 and out is not None and out["code"] == cni.ERR_RESTORE
    assert "no IP to restore" in out["msg"]
    code, out = env.run("ADD", pod=("games", "ghost-clone-1"), netns=None)
    assert code == 1 and out is not None and out["code"] == cni.ERR_ENV and "CNI_NETNS" in out["msg"]
    code, out = env.run("ADD", pod=("games", "ghost-clone-1"), netns=ns, conf={"cniVersion": "1.0.0"})
    assert code == 1 and out is not None and "kubeconfig" in out["msg"]


def test_routed_mode_wires_a_pod_the_way_its_ip_can_move(env: Env) -> None:
    """As the sandbox's node runtime runs it: a node (a network namespace with an uplink),
    the address from the reference `static` IPAM plugin, the node side wired in the node."""
    node = NetNS(f"clm-cni-node-{uuid.uuid4().hex[:6]}").create()
    ip("-n", node.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    ip("-n", node.name, "link", "set", "eth0", "up")
    uid = env.pod("games", "arena-0")
    backend = RoutedBackend(node="cninode", uplink="eth0", node_netns=node.name)
    pod_ns = NetNS(backend.pod_netns(PodNet(uid=uid, ip=""))).create()
    conf = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "clm-cni",
        "kubeconfig": str(env.kubeconfig),
        "stateDir": str(env.state / "clm"),
        "routed": {"node": "cninode", "uplink": "eth0", "nodeNetns": node.name},
        "ipam": {"type": "static", "addresses": [{"address": "10.216.1.9/32"}]},
    }
    try:
        code, out = env.run("ADD", pod=("games", "arena-0"), netns=pod_ns, conf=conf, uid=uid)
        assert code == 0, out
        assert out is not None and out["ips"][0]["address"] == "10.216.1.9/32"
        assert "10.216.1.9/32" in addresses(pod_ns)
        # On the node: the /32 route the IP-handover agent withdraws and proxy ARP on the uplink.
        assert backend.inventory()["routes"] == ["10.216.1.9"]
        assert backend.inventory()["proxy_neighbours"] == ["10.216.1.9"]
        assert ip("link", "show", cni.host_veth(uid), check=False).returncode != 0  # not in the host's
        assert env.run("CHECK", pod=("games", "arena-0"), netns=pod_ns, conf=conf, uid=uid)[0] == 0
        # A namespace named the container runtime's way (containerd: /var/run/netns/cni-…).
        other_uid = env.pod("games", "arena-1")
        elsewhere = NetNS(f"clm-cni-elsewhere-{uuid.uuid4().hex[:6]}").create()
        other = {**conf, "ipam": {"type": "static", "addresses": [{"address": "10.216.1.10/32"}]}}
        try:
            code, out = env.run(
                "ADD", pod=("games", "arena-1"), netns=elsewhere, conf=other, container="c2", uid=other_uid
            )
            assert code == 0, out
            assert "10.216.1.10/32" in addresses(elsewhere)
            assert sorted(backend.inventory()["routes"]) == ["10.216.1.10", "10.216.1.9"]
            code, out = env.run(
                "DEL", pod=("games", "arena-1"), netns=elsewhere, conf=other, container="c2", uid=other_uid
            )
            assert code == 0, out
        finally:
            ip("netns", "del", elsewhere.name, check=False)
        code, out = env.run("DEL", pod=("games", "arena-0"), netns=pod_ns, conf=conf, uid=uid)
        assert code == 0, out
        assert backend.inventory()["routes"] == [] and backend.inventory()["proxy_neighbours"] == []
        assert (
            env.run("DEL", pod=("games", "arena-0"), netns=pod_ns, conf=conf, uid=uid)[0] == 0
        )  # again: done
    finally:
        for ns in (node, pod_ns):
            ip("netns", "del", ns.name, check=False)
