"""Reading numbers out of a step's details (an agent's measurements: str, bool or number
values, as the contract allows): what is not a number reads as the default."""

from __future__ import annotations

from collections.abc import Mapping


def number(details: Mapping[str, object], key: str, default: float = 0.0) -> float:
    value = details.get(key)
    # bool is an int to Python, but True pages is no measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def count(details: Mapping[str, object], key: str, default: int = 0) -> int:
    return int(number(details, key, default))
