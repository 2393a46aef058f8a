import ssl
from pathlib import Path

import orjson
import pytest

from services.checkpoint_agent.tls import AgentTls
from tools.clm.agent_certs import agent_certs, secret_manifest


def test_a_new_ca_then_renewals_and_a_ca_rollover(tmp_path: Path) -> None:
    d = tmp_path / "agent-tls"
    agent_certs(d)
    first_ca = (d / "ca.crt").read_bytes()
    assert AgentTls(d).server_context().verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="already holds a CA"):
        agent_certs(d)
    agent_certs(d, renew=True)
    assert (d / "ca.crt").read_bytes() == first_ca  # same CA, new certificate
    agent_certs(d, new_ca=True)
    bundle = (d / "ca.crt").read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2 and bundle.endswith(first_ca)  # old CA still trusted
    agent_certs(d, renew=True)
    assert (d / "ca.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 1  # the old CA goes
    secret = orjson.loads(secret_manifest(d))
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}


def test_renewing_without_a_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="make one first"):
        agent_certs(tmp_path / "empty", renew=True)
