"""Which migrations may run now: concurrency limits per source node, per destination node
and per cluster (pure). Migrations already past Pending keep their slot; Pending ones are
admitted oldest first while slots remain, the others wait with the reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from clm.contracts.protocol import Phase, is_terminal


@dataclass(frozen=True)
class Limits:
    per_source: int
    per_destination: int
    cluster: int


def _nodes(m: dict[str, Any]) -> tuple[str, str]:
    spec, status = m.get("spec") or {}, m.get("status") or {}
    return (
        status.get("sourceNode") or spec.get("sourceNode") or "",
        status.get("destinationNode") or spec.get("destinationNode") or "",
    )


def _phase(m: dict[str, Any]) -> str | None:
    return (m.get("status") or {}).get("phase")


def _waiting(m: dict[str, Any]) -> bool:
    return _phase(m) in (Phase.PENDING, None)


def admit(
    items: list[dict[str, Any]], limits: Limits
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(migrations to drive, [(migration, why it waits)])."""
    active = [m for m in items if not _waiting(m) and not is_terminal(_phase(m))]
    pending = sorted(
        (m for m in items if _waiting(m)),
        key=lambda m: (m["metadata"].get("creationTimestamp") or "", m["metadata"]["name"]),
    )
    sources = Counter(_nodes(m)[0] for m in active)
    destinations = Counter(_nodes(m)[1] for m in active)
    total = len(active)
    admitted, waiting = list(active), []
    for m in pending:
        src, dst = _nodes(m)
        if total >= limits.cluster:
            waiting.append(
                (m, f"waiting for a slot: {total} migrations in flight (cluster limit {limits.cluster})")
            )
        elif src and sources[src] >= limits.per_source:
            waiting.append(
                (
                    m,
                    f"waiting for a slot: {sources[src]} migrations leaving {src} "
                    f"(limit {limits.per_source})",
                )
            )
        elif dst and destinations[dst] >= limits.per_destination:
            waiting.append(
                (
                    m,
                    f"waiting for a slot: {destinations[dst]} migrations arriving on {dst} "
                    f"(limit {limits.per_destination})",
                )
            )
        else:
            admitted.append(m)
            total += 1
            sources[src] += 1
            destinations[dst] += 1
    return admitted, waiting
