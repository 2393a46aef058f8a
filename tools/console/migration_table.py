"""Every Migration in one table, as `clm watch` shows it live (the rows are pure: a status in,
text out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from tools.console.move_view import describe

COLUMNS = (
    "NAMESPACE",
    "NAME",
    "POD",
    "PHASE",
    "STEP",
    "PROGRESS",
    "MOVED",
    "RATE",
    "ETA",
    "FREEZE",
    "FROM",
    "TO",
    "AGE",
)


def age(created: str | None, now: datetime) -> str:
    if not created:
        return ""
    then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    left = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            return f"{left // size}{unit}"
    return f"{left}s"


def row(migration: dict[str, Any], now: datetime) -> tuple[str, ...]:
    meta, spec = migration["metadata"], migration.get("spec") or {}
    status = migration.get("status") or {}
    shown = describe(status)
    return (
        meta.get("namespace", ""),
        meta["name"],
        spec.get("podName", ""),
        shown["phase"] + (" (deleting)" if meta.get("deletionTimestamp") else ""),
        shown["step"],
        shown["percent"],
        shown["total_moved"],
        shown["rate"],
        shown["eta"],
        shown["frozen"],
        status.get("sourceNode") or spec.get("sourceNode", ""),
        status.get("destinationNode") or spec.get("destinationNode", ""),
        age(meta.get("creationTimestamp"), now),
    )


def rows(migrations: list[dict[str, Any]], now: datetime | None = None) -> list[tuple[str, ...]]:
    """Oldest first, by creation."""
    now = now or datetime.now(UTC)
    ordered = sorted(
        migrations, key=lambda m: (m["metadata"].get("creationTimestamp") or "", m["metadata"]["name"])
    )
    return [row(m, now) for m in ordered]


def table(migrations: list[dict[str, Any]], now: datetime | None = None) -> Table:
    shown = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        shown.add_column(
            column, justify="right" if column in ("PROGRESS", "MOVED", "RATE", "ETA") else "left"
        )
    for cells in rows(migrations, now):
        shown.add_row(*cells)
    if not migrations:
        shown.caption = "no migrations"
    return shown
