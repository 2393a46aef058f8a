"""`clm explain NAMESPACE/POD`: why a pod is or is not eligible for live migration, and
what the Evictor would do with it in each mode — computed by the same policy core the
labeler and planner run, from the objects in the API."""

from __future__ import annotations

from typing import Any

from clm.policy import evictor, names
from clm.policy import objects as o
from clm.policy.eligibility import assess
from clm.policy.evictor import Mode
from clm.policy.workloads import Lookup

INELIGIBLE_ANNOTATION = "live.cast.ai/ineligible-reasons"


def explain(pod: o.Obj, lookup: Lookup) -> dict[str, Any]:
    result = assess(pod, lookup)
    labels = dict(o.labels(pod))
    current = labels.get(names.MIGRATION_ENABLED)
    # What the Evictor sees once the labeler has caught up.
    expected = dict(labels)
    if result.eligible:
        expected[names.MIGRATION_ENABLED] = names.TRUE
    else:
        expected.pop(names.MIGRATION_ENABLED, None)
    node_name = o.spec(pod).get("nodeName") or ""
    node = lookup("Node", "", node_name) if node_name else None
    return {
        "pod": f"{o.namespace(pod)}/{o.name(pod)}",
        "node": node_name or None,
        "node_migration_enabled": node is not None
        and o.labels(node).get(names.MIGRATION_ENABLED) == names.TRUE,
        "workload": {
            "kind": result.workload.kind,
            "name": result.workload.name,
            "replicas": result.workload.replicas,
        },
        "eligible": result.eligible,
        "reasons": [{"code": r.code, "message": r.message} for r in result.reasons],
        "notes": [{"code": r.code, "message": r.message} for r in result.notes],
        "zones": sorted(result.zones) if result.zones is not None else None,
        "label": current,
        "label_up_to_date": (current == names.TRUE) == result.eligible,
        "labeler_annotation": o.annotations(pod).get(INELIGIBLE_ANNOTATION),
        "evictor": {
            str(mode): {"action": str(d.action), "fallback": str(d.fallback), "why": d.why}
            for mode in Mode
            for d in [evictor.decide(expected, replicas=result.workload.replicas, mode=mode)]
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"pod {report['pod']} on node {report['node'] or '(not scheduled)'}"]
    w = report["workload"]
    lines.append(
        f"workload: {w['kind']} {w['name']} ({w['replicas']} replica{'s' if w['replicas'] != 1 else ''})"
    )
    lines.append(f"eligible for live migration: {'yes' if report['eligible'] else 'no'}")
    lines += [f"  - {r['code']}: {r['message']}" for r in report["reasons"]]
    if report["notes"]:
        lines.append("notes:")
        lines += [f"  - {r['code']}: {r['message']}" for r in report["notes"]]
    if report["zones"] is not None:
        lines.append(f"volumes pin it to zones: {', '.join(report['zones'])}")
    label = report["label"]
    state = "up to date" if report["label_up_to_date"] else "not yet updated by the labeler (is it running?)"
    lines.append(f"label {names.MIGRATION_ENABLED}: {label or '(absent)'} — {state}")
    if report["node"] and not report["node_migration_enabled"]:
        lines.append(
            f"its node is not labeled {names.MIGRATION_ENABLED}=true: no working checkpoint agent there"
        )
    for mode, d in report["evictor"].items():
        fallback = f", on failure: {d['fallback']}" if d["action"] == "live-migrate" else ""
        lines.append(f"Evictor, {mode} mode: {d['action']}{fallback} ({d['why']})")
    return "\n".join(lines)
