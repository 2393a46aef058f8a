"""Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as integers.

CPU becomes millicores, everything else its base unit (bytes, count), rounded up as the
Kubernetes scheduler does.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from functools import lru_cache

_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_PATTERN = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


class QuantityError(ValueError):
    pass


@lru_cache(maxsize=4096)
def parse(value: str | int | float) -> Decimal:
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _PATTERN.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity (e.g. 100m, 512Mi, 2)")
    number, suffix = match.groups()
    try:
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation:
        raise QuantityError(f"{value!r} is not a Kubernetes quantity") from None


def millicores(value: str | int | float) -> int:
    return int((parse(value) * 1000).to_integral_value(rounding=ROUND_CEILING))


def units(value: str | int | float) -> int:
    return int(parse(value).to_integral_value(rounding=ROUND_CEILING))


def to_int(resource: str, value: str | int | float) -> int:
    """The integer the policy core uses for `resource`: millicores for cpu, else units."""
    return millicores(value) if resource == "cpu" else units(value)
