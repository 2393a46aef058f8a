"""`clm agent-certs DIR`: the cluster's agent CA and the agents' certificate, for the Secret
`clm-agent-tls` the checkpoint agents mount (their mutual TLS); `clm nats-certs DIR`: the
NATS servers' CA, certificate and the clients' password (the nats-tls component).

    clm agent-certs ./agent-tls            a new CA (ca.key stays here) and a certificate
    clm agent-certs ./agent-tls --renew    a new certificate from the CA already in DIR
    clm agent-certs ./agent-tls --new-ca   a new CA; the old one stays trusted until the
                                           next --renew, so agents roll over without a gap

then `kubectl -n castai-agent create secret tls ...` as printed (or apply --secret's output).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import orjson

from services.checkpoint_agent.certs import Pem, make_agent_cert, make_ca, make_cert, write_agent_tls

NAMESPACE = "castai-agent"


def _read(directory: Path, name: str) -> bytes | None:
    path = directory / name
    return path.read_bytes() if path.is_file() else None


def agent_certs(directory: Path, *, renew: bool = False, new_ca: bool = False) -> list[str]:
    """Write DIR/{ca.crt,ca.key,tls.crt,tls.key}; what was done, line by line."""
    old_cert, old_key = _read(directory, "ca.crt"), _read(directory, "ca.key")
    if (renew or new_ca) and (old_cert is None or old_key is None):
        raise ValueError(f"no CA in {directory} (ca.crt and ca.key): make one first, without --renew")
    if not (renew or new_ca) and old_key is not None:
        raise ValueError(f"{directory} already holds a CA: use --renew (new certificate) or --new-ca")
    said = []
    trusted: tuple[Pem, ...] = ()
    if renew:
        assert old_cert is not None and old_key is not None
        # The first certificate in ca.crt is the current CA; an old one it still trusted goes.
        current = old_cert.split(b"-----END CERTIFICATE-----", 1)[0] + b"-----END CERTIFICATE-----\n"
        ca = Pem(current, old_key)
        said.append("renewed the agents' certificate (same CA)")
    else:
        ca = make_ca()
        if new_ca:
            assert old_cert is not None and old_key is not None
            trusted = (Pem(old_cert, old_key),)
            said.append("a new CA; the old one stays trusted until the next --renew")
        else:
            said.append("a new CA for this cluster's agents")
    write_agent_tls(directory, ca, make_agent_cert(ca), trusted=trusted)
    key = directory / "ca.key"
    key.write_bytes(ca.key)
    key.chmod(0o600)
    said.append(f"keep {key} safe and out of the cluster: it signs agent certificates")
    return said


def secret_manifest(directory: Path) -> str:
    """The Secret clm-agent-tls as JSON (which kubectl apply takes as YAML)."""
    data = {
        n: base64.b64encode((directory / n).read_bytes()).decode() for n in ("ca.crt", "tls.crt", "tls.key")
    }
    return orjson.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "clm-agent-tls", "namespace": NAMESPACE},
            "data": data,
        },
        option=orjson.OPT_INDENT_2,
    ).decode()


def nats_names(namespace: str) -> tuple[str, ...]:
    """Every name clients and routes reach the bundled NATS servers by."""
    return (
        "clm-nats",
        f"clm-nats.{namespace}",
        f"clm-nats.{namespace}.svc",
        "*.clm-nats-headless",
        f"*.clm-nats-headless.{namespace}",
        f"*.clm-nats-headless.{namespace}.svc",
    )


def nats_certs(
    directory: Path, *, namespace: str = NAMESPACE, extra_names: tuple[str, ...] = ()
) -> list[str]:
    """DIR/{ca.crt,ca.key,tls.crt,tls.key,password} for the nats-tls component."""
    if (directory / "ca.key").exists():
        raise ValueError(f"{directory} already holds a CA: remove it to make a new one")
    ca = make_ca(common_name="clm-nats-ca")
    server = make_cert(ca, names=(*nats_names(namespace), *extra_names))
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("ca.crt", ca.cert),
        ("ca.key", ca.key),
        ("tls.crt", server.cert),
        ("tls.key", server.key),
        # Letters and digits, starting with letters: NATS parses a variable's value, and a
        # token with dashes can read as a date.
        ("password", ("clm" + secrets.token_hex(24)).encode()),
    ):
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    return [
        f"NATS server certificate for {', '.join(nats_names(namespace))}",
        f"keep {directory}/ca.key safe",
    ]


def nats_secrets(directory: Path, *, namespace: str = NAMESPACE) -> str:
    """The Secrets clm-nats-tls (servers), clm-nats-ca (clients) and clm-nats-auth, as a List."""

    def secret(name: str, kind: str, files: dict[str, str]) -> dict[str, object]:
        data = {key: base64.b64encode((directory / f).read_bytes()).decode() for key, f in files.items()}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": kind,
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        }

    items = [
        secret(
            "clm-nats-tls",
            "kubernetes.io/tls",
            {"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"},
        ),
        secret("clm-nats-ca", "Opaque", {"ca.crt": "ca.crt"}),
        secret("clm-nats-auth", "Opaque", {"password": "password"}),
    ]
    return orjson.dumps(
        {"apiVersion": "v1", "kind": "List", "items": items}, option=orjson.OPT_INDENT_2
    ).decode()
