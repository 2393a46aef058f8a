"""The Evictor's decision for one pod: the label matrix (seed 000) and the two modes.

Matrix (only the value "true" counts as true):

| migration-enabled | removal-disabled | live-migration-disabled | action |
| true  | true  | false/missing | live-migrate; on failure restore on the source node |
| true  | true  | true          | nothing (protected) |
| true  | false | true          | evict |
| true  | false | false/missing | live-migrate; on failure evict |
| false | true  | (ignored)     | nothing (protected) |
| false | false | (ignored)     | evict |

Default mode live-migrates multi-replica workloads; single-replica workloads take the
traditional path (evict, or stay when removal is disabled). Aggressive mode live-migrates
every eligible pod, single-replica deployments and bare pods included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from clm.contracts.fields import Fallback
from clm.policy import names


class Action(StrEnum):
    LIVE_MIGRATE = "live-migrate"
    EVICT = "evict"
    NONE = "none"


class Mode(StrEnum):
    DEFAULT = "default"
    AGGRESSIVE = "aggressive"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    # What to do if the live migration fails (Fallback.NONE unless action is LIVE_MIGRATE).
    fallback: Fallback
    why: str


def matrix(labels: Mapping[str, str] | None) -> Decision:
    """The six-row label matrix, exactly."""
    labels = dict(labels or {})
    enabled = names.is_true(labels, names.MIGRATION_ENABLED)
    removal_disabled = names.is_true(labels, names.REMOVAL_DISABLED)
    lm_disabled = names.is_true(labels, names.LIVE_MIGRATION_DISABLED)
    if enabled and removal_disabled and not lm_disabled:
        return Decision(Action.LIVE_MIGRATE, Fallback.RESTORE_ON_SOURCE,
                        "eligible and removal-disabled: live-migrate, restore on source if it fails")
    if enabled and removal_disabled:
        return Decision(Action.NONE, Fallback.NONE,
                        "removal-disabled and live-migration-disabled: protected")
    if enabled and lm_disabled:
        return Decision(Action.EVICT, Fallback.NONE, "live-migration-disabled: traditional eviction")
    if enabled:
        return Decision(Action.LIVE_MIGRATE, Fallback.EVICT,
                        "eligible: live-migrate, evict if it fails")
    if removal_disabled:
        return Decision(Action.NONE, Fallback.NONE, "not eligible and removal-disabled: protected")
    return Decision(Action.EVICT, Fallback.NONE, "not eligible for live migration: traditional eviction")


def decide(labels: Mapping[str, str] | None, *, replicas: int, mode: Mode) -> Decision:
    """The action for a pod, given its labels, its workload's replica count and the mode."""
    decision = matrix(labels)
    if decision.action is not Action.LIVE_MIGRATE or mode is Mode.AGGRESSIVE or replicas > 1:
        return decision
    # Default mode: single-replica workloads take the traditional path.
    if decision.fallback is Fallback.RESTORE_ON_SOURCE:
        return Decision(Action.NONE, Fallback.NONE,
                        "default mode: single replica and removal-disabled, so it stays")
    return Decision(Action.EVICT, Fallback.NONE,
                    "default mode: single-replica workloads are evicted (aggressive mode migrates them)")
