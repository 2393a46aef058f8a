from __future__ import annotations

from typing import Any

from clm.contracts import DrainPlanned, PlannedDrain, PlannedMove
from clm.policy import names
from tests.kit import builders as b
from tools.clm import plan
from tools.clm.explain import explain, render


def _lookup(*objects: dict[str, Any]):
    index = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}
    return lambda kind, namespace, name: index.get((kind, namespace, name))


def test_a_labeled_three_replica_statefulset_pod_is_live_migrated_in_both_modes() -> None:
    sts = b.workload("StatefulSet", "db", replicas=3)
    pod = b.pod("db-0", owners=[b.owner("StatefulSet", "db")], labels={names.MIGRATION_ENABLED: "true"})
    report = explain(pod, _lookup(sts, b.node("node-a")))
    assert report["eligible"] and report["label_up_to_date"]
    assert {m: d["action"] for m, d in report["evictor"].items()} == {
        "default": "live-migrate",
        "aggressive": "live-migrate",
    }
    text = render(report)
    assert "eligible for live migration: yes" in text
    assert "label live.cast.ai/migration-enabled: true — up to date" in text
    assert "no working checkpoint agent" not in text


def test_an_ineligible_pod_lists_every_reason_and_a_stale_label_is_flagged() -> None:
    pod = b.pod("web", containers=[b.container(tty=True)], labels={names.MIGRATION_ENABLED: "true"})
    report = explain(pod, _lookup(b.node("node-a", migration_enabled=False)))
    assert not report["eligible"]
    assert [r["code"] for r in report["reasons"]] == ["tty"]
    assert not report["label_up_to_date"]
    text = render(report)
    assert "not yet updated by the labeler" in text
    assert "not labeled live.cast.ai/migration-enabled=true" in text


def test_plan_render_names_every_move_and_says_when_nothing_is_drained() -> None:
    quiet = plan.render(DrainPlanned(mode="default", dry_run=False, nodes=2, pods=4, paused=True))
    assert "no new drains this cycle" in quiet and "PAUSED" in quiet
    busy = plan.render(
        DrainPlanned(
            mode="default",
            dry_run=True,
            nodes=2,
            pods=4,
            new_drains=[
                PlannedDrain(
                    node="n2",
                    why="spot-interruption",
                    saving_per_hour=0.0,
                    moves=[PlannedMove(namespace="a", pod="p", action="evict", why="one replica")],
                )
            ],
        )
    )
    assert "default mode, dry run" in busy
    assert "evict" in busy and "a/p  (one replica)" in busy and "->" not in busy
