"""What the labeler writes (pure): the patch that makes a pod's or node's label match the
assessment, or None when it already does. Only CLM's own label and annotation are ever in
a patch; every other label stays as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clm.policy import names
from clm.policy import objects as o
from clm.policy.eligibility import EligibilityConfig, assess
from clm.policy.workloads import Lookup

# Why a pod is not eligible, for people (`kubectl describe pod`); absent when eligible.
INELIGIBLE_ANNOTATION = "live.cast.ai/ineligible-reasons"


@dataclass(frozen=True)
class PodVerdict:
    eligible: bool
    reasons: tuple[tuple[str, str], ...]  # (code, message)

    @property
    def summary(self) -> str:
        return "; ".join(f"{code}: {message}" for code, message in self.reasons)


def pod_verdict(pod: o.Obj, lookup: Lookup, config: EligibilityConfig | None = None) -> PodVerdict:
    result = assess(pod, lookup, config)
    return PodVerdict(result.eligible, tuple((r.code, r.message) for r in result.reasons))


def pod_patch(pod: o.Obj, verdict: PodVerdict) -> dict[str, Any] | None:
    labels, annotations = o.labels(pod), o.annotations(pod)
    want_label = names.TRUE if verdict.eligible else None
    want_note = None if verdict.eligible else verdict.summary[:4000]
    patch: dict[str, Any] = {}
    if labels.get(names.MIGRATION_ENABLED) != want_label:
        patch.setdefault("metadata", {})["labels"] = {names.MIGRATION_ENABLED: want_label}
    if annotations.get(INELIGIBLE_ANNOTATION) != want_note:
        patch.setdefault("metadata", {})["annotations"] = {INELIGIBLE_ANNOTATION: want_note}
    return patch or None


def node_patch(node: o.Obj, *, capable: bool) -> dict[str, Any] | None:
    want = names.TRUE if capable else None
    if o.labels(node).get(names.MIGRATION_ENABLED) == want:
        return None
    return {"metadata": {"labels": {names.MIGRATION_ENABLED: want}}}


def owns(pod_uid: str, shard: int, shards: int) -> bool:
    """Replicas share the pods by a stable hash of the UID: each pod has one labeler."""
    if shards <= 1:
        return True
    value = 0
    for ch in pod_uid.encode():
        value = (value * 131 + ch) % 1_000_000_007
    return value % shards == shard
