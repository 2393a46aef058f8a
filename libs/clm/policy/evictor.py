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


# The matrix's outcomes (decisions are immutable, so one object each serves every pod).
MIGRATE_RESTORE_FALLBACK = Decision(
    Action.LIVE_MIGRATE,
    Fallback.RESTORE_ON_SOURCE,
    "eligible and removal-disabled: live-migrate, restore on source if it fails",
)
PROTECTED_BOTH = Decision(
    Action.NONE, Fallback.NONE, "removal-disabled and live-migration-disabled: protected"
)
EVICT_OPTED_OUT = Decision(Action.EVICT, Fallback.NONE, "live-migration-disabled: traditional eviction")
MIGRATE_EVICT_FALLBACK = Decision(
    Action.LIVE_MIGRATE, Fallback.EVICT, "eligible: live-migrate, evict if it fails"
)
PROTECTED_NOT_ELIGIBLE = Decision(Action.NONE, Fallback.NONE, "not eligible and removal-disabled: protected")
EVICT_NOT_ELIGIBLE = Decision(
    Action.EVICT, Fallback.NONE, "not eligible for live migration: traditional eviction"
)
STAYS_SINGLE_REPLICA = Decision(
    Action.NONE, Fallback.NONE, "default mode: single replica and removal-disabled, so it stays"
)
EVICT_SINGLE_REPLICA = Decision(
    Action.EVICT,
    Fallback.NONE,
    "default mode: single-replica workloads are evicted (aggressive mode migrates them)",
)


def matrix(labels: Mapping[str, str] | None) -> Decision:
    """The six-row label matrix, exactly."""
    labels = labels or {}
    enabled = labels.get(names.MIGRATION_ENABLED) == names.TRUE
    removal_disabled = labels.get(names.REMOVAL_DISABLED) == names.TRUE
    lm_disabled = labels.get(names.LIVE_MIGRATION_DISABLED) == names.TRUE
    if enabled:
        if removal_disabled:
            return PROTECTED_BOTH if lm_disabled else MIGRATE_RESTORE_FALLBACK
        return EVICT_OPTED_OUT if lm_disabled else MIGRATE_EVICT_FALLBACK
    return PROTECTED_NOT_ELIGIBLE if removal_disabled else EVICT_NOT_ELIGIBLE


def decide(labels: Mapping[str, str] | None, *, replicas: int, mode: Mode) -> Decision:
    """The action for a pod, given its labels, its workload's replica count and the mode."""
    decision = matrix(labels)
    if decision.action is not Action.LIVE_MIGRATE or mode is Mode.AGGRESSIVE or replicas > 1:
        return decision
    # Default mode: single-replica workloads take the traditional path.
    if decision.fallback is Fallback.RESTORE_ON_SOURCE:
        return STAYS_SINGLE_REPLICA
    return EVICT_SINGLE_REPLICA
