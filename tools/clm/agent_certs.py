"""`clm agent-certs DIR`: the cluster's agent CA and the agents' certificate, for the Secret
`clm-agent-tls` the checkpoint agents mount (their mutual TLS).

    clm agent-certs ./agent-tls            a new CA (ca.key stays here) and a certificate
    clm agent-certs ./agent-tls --renew    a new certificate from the CA already in DIR
    clm agent-certs ./agent-tls --new-ca   a new CA; the old one stays trusted until the
                                           next --renew, so agents roll over without a gap

then `kubectl -n castai-agent create secret tls ...` as printed (or apply --secret's output).
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from services.checkpoint_agent.certs import Pem, make_agent_cert, make_ca, write_agent_tls

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
