"""The agents' certificates: a per-cluster CA and the certificate every agent presents.

`clm agent-certs` writes them (or prints the Secret `clm-agent-tls`), the sandbox and the
tests make their own. One certificate serves every node's agent: it names the role
(`clm-checkpoint-agent`), not a node, so a DaemonSet can mount one Secret everywhere.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.checkpoint_agent.tls import AGENT_NAME


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(*, common_name: str = "clm-agent-ca", days: int = 3650) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_agent_cert(ca: Pem, *, days: int = 365) -> Pem:
    """A certificate for every agent, good as both server and client, signed by `ca`."""
    return make_cert(ca, names=(AGENT_NAME,), days=days)


def make_cert(ca: Pem, *, names: tuple[str, ...], days: int = 365) -> Pem:
    """A certificate for `names` (DNS SANs; the first is its common name), good as both
    server and client, signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_agent_tls(directory: Path, ca: Pem, agent: Pem, *, trusted: tuple[Pem, ...] = ()) -> None:
    """The three files an agent reads; `trusted` adds CAs (the old one, during a rotation).
    Each file is replaced whole, as kubelet replaces a mounted Secret."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("ca.crt", b"".join(p.cert for p in (ca, *trusted))),
        ("tls.crt", agent.cert),
        ("tls.key", agent.key),
    ):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        staged.chmod(0o600)
        staged.replace(directory / name)
