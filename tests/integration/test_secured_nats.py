"""A secured NATS (password auth over TLS, mutual TLS) works through settings alone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clm.contracts import NodeCapabilities, streams, subjects
from tests.integration.support import eventually, make_app
from tests.kit.nats_server import NatsServer


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=clm-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(d / "san.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return d


async def _round_trip(url: str, **settings: Any) -> None:
    app = make_app(url, **settings)
    seen: list[str] = []

    @app.consumer(
        NodeCapabilities,
        durable="secured",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
    )
    async def on_caps(caps: NodeCapabilities) -> None:
        seen.append(caps.node)

    await app.start()
    try:
        assert app.readiness()[0]
        await app.publish(NodeCapabilities(node="n1", agent_version="t", arch="amd64", probe_ok=True))
        await eventually(lambda: seen == ["n1"], what="message over the secured connection")
    finally:
        await app.stop()


@pytest.fixture
def tls_password_server(pki: Path) -> Iterator[NatsServer]:
    args = (
        "--user",
        "clm",
        "--pass",
        "s3cret",
        "--tls",
        "--tlscert",
        str(pki / "server.pem"),
        "--tlskey",
        str(pki / "server.key"),
    )
    with NatsServer(extra_args=args) as server:
        yield server


async def test_user_password_over_tls(tls_password_server: NatsServer, pki: Path) -> None:
    url = f"tls://127.0.0.1:{tls_password_server.port}"
    await _round_trip(url, nats_user="clm", nats_password="s3cret", nats_tls_ca_file=pki / "ca.pem")


async def test_wrong_password_is_refused(tls_password_server: NatsServer, pki: Path) -> None:
    url = f"tls://127.0.0.1:{tls_password_server.port}"
    app = make_app(url, nats_user="clm", nats_password="wrong", nats_tls_ca_file=pki / "ca.pem")
    with pytest.raises(Exception, match="(?i)authorization"):
        await app.start()
    await app.stop()


async def test_mutual_tls(pki: Path) -> None:
    args = (
        "--tlsverify",
        "--tlscert",
        str(pki / "server.pem"),
        "--tlskey",
        str(pki / "server.key"),
        "--tlscacert",
        str(pki / "ca.pem"),
    )
    with NatsServer(extra_args=args) as server:
        await _round_trip(
            f"tls://127.0.0.1:{server.port}",
            nats_tls_ca_file=pki / "ca.pem",
            nats_tls_cert_file=pki / "client.pem",
            nats_tls_key_file=pki / "client.key",
        )
