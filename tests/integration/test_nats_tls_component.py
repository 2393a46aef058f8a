"""The nats-tls kustomize component works for real: a nats-server runs with the component's
own configuration and the certificates `clm nats-certs` makes, and a service loads its
settings from exactly what the component gives its pod (ConfigMap, Secret files, password)
and round-trips a message through JetStream. Plain and anonymous clients are refused."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from clm.contracts import NodeCapabilities, streams, subjects
from clm.runtime import ServiceSettings
from clm.runtime.settings import load_settings
from tests.integration.support import eventually
from tests.kit.nats_server import NatsServer
from tools.clm.agent_certs import nats_certs

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the component")


def render(tmp: Path) -> list[dict[str, Any]]:
    rel = os.path.relpath(KUSTOMIZE, tmp)
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [f"{rel}/base"], "components": [f"{rel}/components/nats-tls"]})
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = (d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    return found


def server_config(docs: list[dict[str, Any]], certs: Path) -> str:
    """The component's nats.conf for one server here: its files where the pod mounts them,
    and no cluster block (the routes' peers do not exist on this machine)."""
    conf = one(docs, "ConfigMap", "clm-nats-config")["data"]["nats.conf"]
    statefulset = one(docs, "StatefulSet", "clm-nats")
    mounts = {
        m["name"]: m["mountPath"]
        for m in statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    conf = conf.replace(mounts["nats-tls"], str(certs))
    # The store directory and the port come from the command line here.
    conf = re.sub(r"\n\s*(store_dir|pid_file|port): [^\n]*", "\n", conf)
    conf = re.sub(r"\ncluster \{.*\n\}\n?", "\n", conf, flags=re.DOTALL)
    assert "cluster" not in conf and "tls {" in conf and "authorization {" in conf
    return conf


def pod_env(docs: list[dict[str, Any]], kind: str, name: str, certs: Path) -> dict[str, str]:
    """What the component gives a service's pod, its Secret files mirrored here."""
    workload = one(docs, kind, name)
    spec = workload["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref == {"name": "clm-nats-auth", "key": "password"}
            env[var["name"]] = (certs / "password").read_text()
    ca_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "nats-ca")
    assert env["CLM_NATS_TLS_CA_FILE"] == f"{ca_mount}/ca.crt"
    assert {"name": "nats-ca", "secret": {"secretName": "clm-nats-ca"}} in spec["volumes"]
    env["CLM_NATS_TLS_CA_FILE"] = str(certs / "ca.crt")
    return {k: v for k, v in env.items() if k.startswith("CLM_NATS_")}


@pytest.fixture
def secured(tmp_path: Path) -> tuple[list[dict[str, Any]], Path, NatsServer]:
    docs = render(tmp_path)
    certs = tmp_path / "nats-tls"
    nats_certs(certs, extra_names=("localhost",))
    conf = tmp_path / "nats.conf"
    conf.write_text(server_config(docs, certs))
    # The server's environment, as its pod gets it (the Secret's password, its own name).
    pod_env = {"CLM_NATS_PASSWORD": (certs / "password").read_text(), "SERVER_NAME": "clm-nats-0"}
    os.environ.update(pod_env)
    try:
        server = NatsServer(extra_args=("-c", str(conf))).start()
    finally:
        for key in pod_env:
            del os.environ[key]
    return docs, certs, server


async def test_a_service_connects_with_what_the_component_gives_its_pod(
    secured: tuple[list[dict[str, Any]], Path, NatsServer],
) -> None:
    docs, certs, server = secured
    try:
        for kind, name in (("Deployment", "clm-coordinator"), ("DaemonSet", "clm-checkpoint-agent")):
            env = pod_env(docs, kind, name, certs)
            assert env["CLM_NATS_URL"] == "tls://clm-nats:4222" and env["CLM_NATS_USER"] == "clm"
            env["CLM_NATS_URL"] = f"tls://localhost:{server.port}"  # the Service's name, here
            for key, value in env.items():
                os.environ[key] = value
            try:
                settings = load_settings(
                    ServiceSettings, http_host="127.0.0.1", http_port=0, stream_replicas=1
                )
            finally:
                for key in env:
                    del os.environ[key]
            await round_trip(settings)
    finally:
        server.stop()


async def test_plain_and_anonymous_clients_are_refused(
    secured: tuple[list[dict[str, Any]], Path, NatsServer],
) -> None:
    _, certs, server = secured
    try:
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises several kinds
            await nats.connect(f"nats://127.0.0.1:{server.port}", allow_reconnect=False, connect_timeout=2)
        import ssl

        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with pytest.raises(Exception, match="[Aa]uthorization"):
            await nats.connect(
                f"tls://localhost:{server.port}", tls=context, allow_reconnect=False, connect_timeout=2
            )
    finally:
        server.stop()


async def round_trip(settings: ServiceSettings) -> None:
    from clm.runtime import ServiceApp

    app = ServiceApp(name="tls-check", version="test", settings=settings, description="nats-tls check")
    seen: list[str] = []

    @app.consumer(
        NodeCapabilities,
        durable="tls-check",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        seen.append(caps.node)

    await app.start()
    try:
        await app.publish(NodeCapabilities(node="n1", agent_version="t", arch="amd64", probe_ok=True))
        await eventually(lambda: seen == ["n1"], what="the message through TLS and login")
        await asyncio.sleep(0)
    finally:
        await app.stop()
