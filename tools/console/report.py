"""Printing benchmark results: an aligned table for people, JSON lines for machines."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def emit(title: str, rows: list[dict[str, Any]], *, as_json: bool, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up at call time: callers may have redirected it
    if as_json:
        for row in rows:
            out.write(orjson.dumps({"benchmark": title, **row}).decode() + "\n")
        return
    if not rows:
        out.write(f"{title}: no results\n")
        return
    columns = list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out.write(f"\n{title}\n")
    out.write("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + "\n")
