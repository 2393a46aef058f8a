"""Service settings from the environment (prefix CLM_), validated at start.

A bad value stops the service with a message naming the environment variable, e.g.
`CLM_HTTP_PORT: Input should be a valid integer (got 'abc')`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clm.contracts.fields import K8S_NAME_PATTERN

ENV_PREFIX = "CLM_"


class SettingsError(SystemExit):
    """Raised (as a clean exit with status 2) when the environment holds a bad value."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ServiceSettings(BaseSettings):
    """Settings every service has. Services subclass it to add their own."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # NATS: comma-separated URLs of the cluster.
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    # A .creds file (JWT + nkey seed) as produced by `nsc`.
    nats_creds_file: Path | None = None
    nats_nkey_seed_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    nats_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long a JetStream API request (declaring a consumer, reading its info) may take: a
    # NATS server on a loaded or emulated machine may answer later than nats-py's 5 s.
    nats_request_timeout_seconds: float = Field(default=5.0, gt=0)

    # The one HTTP port: /metrics, /healthz, /readyz.
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Delivery policy of every consumer: a message is tried max_deliver times, waiting
    # redelivery_backoff_seconds[n] before try n+2, then goes to the dead-letter subject.
    max_deliver: int = Field(default=5, ge=1, le=100)
    redelivery_backoff_seconds: list[float] = Field(default=[1.0, 5.0, 15.0, 30.0])
    ack_wait_seconds: float = Field(default=60.0, gt=0)
    # How long SIGTERM waits for in-flight messages before closing anyway.
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    # A publish NATS does not take (it is restarting) is tried again this long (the message
    # id keeps a retry from being stored twice) before the caller sees the error.
    publish_retry_seconds: float = Field(default=30.0, ge=0)
    # Replicas of JetStream streams when this service declares them (3 on a NATS cluster).
    stream_replicas: int = Field(default=1, ge=1, le=5)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redelivery_backoff_seconds")
    @classmethod
    def _positive_backoff(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("must be a non-empty JSON list of positive seconds, e.g. [1, 5, 30]")
        return value

    @model_validator(mode="after")
    def _consistent_credentials(self) -> Self:
        if (self.nats_user is None) != (self.nats_password is None):
            raise ValueError("CLM_NATS_USER and CLM_NATS_PASSWORD must be set together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("CLM_NATS_TLS_CERT_FILE and CLM_NATS_TLS_KEY_FILE must be set together")
        for name in (
            "nats_creds_file",
            "nats_nkey_seed_file",
            "nats_tls_ca_file",
            "nats_tls_cert_file",
            "nats_tls_key_file",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: no such file {str(path)!r}")
        return self

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Read settings from the environment; on a bad value raise SettingsError naming it."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]  # field values by name; pydantic checks them
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            var = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
            got = err.get("input")
            shown = "" if loc == [] or isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{var}: {err['msg']}{shown}")
        raise SettingsError(
            "invalid configuration, fix these environment variables:\n  " + "\n  ".join(lines)
        ) from None


class NodeAgentSettings(ServiceSettings):
    """Settings of the per-node agents (DaemonSet pods), addressed by node name."""

    # The Kubernetes node this agent serves (the downward API's spec.nodeName).
    node_name: str = Field(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)
