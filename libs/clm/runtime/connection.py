"""NATS connection security from settings: user/password, token, creds file, nkey, TLS."""

from __future__ import annotations

import ssl
from typing import Any

from faststream.nats import (
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsToken,
    NatsUserPassword,
)

from clm.runtime.settings import ServiceSettings


def ssl_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca_file is None and settings.nats_tls_cert_file is None:
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None
    )
    if settings.nats_tls_cert_file and settings.nats_tls_key_file:
        ctx.load_cert_chain(str(settings.nats_tls_cert_file), str(settings.nats_tls_key_file))
    return ctx


def security(settings: ServiceSettings) -> NatsSecurity | None:
    """The FastStream security object for the configured credentials, or None."""
    ctx = ssl_context(settings)
    tls: dict[str, Any] = {"ssl_context": ctx, "use_ssl": True} if ctx else {}
    if settings.nats_creds_file:
        return NatsCredentials(str(settings.nats_creds_file), **tls)
    if settings.nats_nkey_seed_file:
        return NatsNKey(settings.nats_nkey_seed_file, **tls)
    if settings.nats_user and settings.nats_password:
        return NatsUserPassword(settings.nats_user, settings.nats_password, **tls)
    if settings.nats_token:
        return NatsToken(settings.nats_token, **tls)
    if ctx:
        return NatsSecurity(**tls)
    return None
