"""The base every CLM message derives from, and the registry of message kinds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

# kind -> model class; filled as message classes are defined.
REGISTRY: dict[str, type[Message]] = {}


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """A versioned message. Subclasses set `kind` to a Literal and implement `subject()`.

    `message_id` is the NATS `Nats-Msg-Id`: publishers that may retry set it from what
    identifies the logical event (for instance the migration uid, reason and sequence), so
    JetStream stores a retried publish once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    # The newest schema_version of this kind that this code understands.
    SCHEMA_VERSION: ClassVar[int] = 1
    # False: sent on plain NATS, in no stream (`ServiceApp.announce`): stale in seconds.
    STORED: ClassVar[bool] = True

    kind: str
    schema_version: int = Field(default=1, ge=1)
    message_id: str = Field(default_factory=_new_id, min_length=1, max_length=200)
    occurred_at: datetime = Field(default_factory=_now)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("kind")
        default = field.default if field is not None else None
        if isinstance(default, str) and default:
            if default in REGISTRY and REGISTRY[default] is not cls:
                raise TypeError(f"message kind {default!r} is defined twice")
            REGISTRY[default] = cls

    def subject(self) -> str:  # pragma: no cover - every concrete kind overrides it
        raise NotImplementedError(f"{type(self).__name__} does not define its subject")
