"""Encoding and decoding of every CLM message: orjson bytes, checked against the registry.

`decode` never lets a bad payload through: unknown kinds, unsupported schema versions and
invalid fields all raise `ContractError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, overload

import orjson
from pydantic import ValidationError

from clm.contracts.base import REGISTRY, Message

M = TypeVar("M", bound=Message)


class ContractError(ValueError):
    """A payload that is not a valid CLM message of the expected kind."""


def encode(message: Message) -> bytes:
    # default=str covers the few types orjson lacks (IP addresses).
    return orjson.dumps(message.model_dump(mode="python"), default=str)


def _describe_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@overload
def decode(data: bytes | str, expected: type[M]) -> M: ...


@overload
def decode(data: bytes | str, expected: Iterable[type[Message]] | None = None) -> Message: ...


def decode(data: bytes | str, expected: type[Message] | Iterable[type[Message]] | None = None) -> Message:
    """Parse one message; `expected` limits which kinds are acceptable."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"payload is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ContractError(f"payload must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise ContractError("payload has no 'kind' field naming the message type")
    model = REGISTRY.get(kind)
    if model is None:
        raise ContractError(f"unknown message kind {kind!r}; known kinds: {', '.join(sorted(REGISTRY))}")
    if expected is not None:
        allowed = (expected,) if isinstance(expected, type) else tuple(expected)
        if not any(issubclass(model, a) for a in allowed):
            names = ", ".join(a.__name__ for a in allowed)
            raise ContractError(f"message kind {kind!r} is not accepted here (expected {names})")
    version = obj.get("schema_version", 1)
    if isinstance(version, int) and version > model.SCHEMA_VERSION:
        raise ContractError(
            f"{kind} schema_version {version} is newer than this service understands"
            f" ({model.SCHEMA_VERSION}); upgrade the consuming service"
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid {kind}: {_describe_errors(exc)}") from None
