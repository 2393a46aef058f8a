from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from services.coordinator.move_metrics import MoveMetrics


def test_running_moves_are_exported_from_their_progress_and_end_with_them() -> None:
    registry = CollectorRegistry()
    running: dict[str, dict[str, Any]] = {
        "games/mc-move": {
            "progress": {
                "step": "dump",
                "percent": 50.0,
                "bytesDone": 300,
                "bytesTotal": 1000,
                "bytesMoved": 800,
                "bytesPerSecond": 100,
                "frozenSeconds": 1.5,
            }
        },
        "games/not-started": {},
    }
    MoveMetrics(registry, running=lambda: running)
    text = generate_latest(registry).decode()
    at = 'migration="mc-move",namespace="games",step="dump"'
    assert f"clm_migration_transfer_remaining_bytes{{{at}}} 700.0" in text
    assert f"clm_migration_moved_bytes{{{at}}} 800.0" in text
    assert f"clm_migration_progress_ratio{{{at}}} 0.5" in text
    assert f"clm_migration_frozen_seconds{{{at}}} 1.5" in text
    assert "not-started" not in text
    running.clear()
    assert "mc-move" not in generate_latest(registry).decode()


def test_a_move_without_progress_counts_its_stalled_seconds_from_the_last_change() -> None:
    registry, now = CollectorRegistry(), [100.0]
    progress: dict[str, Any] = {"step": "restore", "percent": 90.0, "bytesMoved": 800}
    MoveMetrics(registry, running=lambda: {"games/m": {"progress": progress}}, clock=lambda: now[0])
    at = 'migration="m",namespace="games",step="restore"'
    assert f"clm_migration_stalled_seconds{{{at}}} 0.0" in generate_latest(registry).decode()
    now[0] = 400.0
    assert f"clm_migration_stalled_seconds{{{at}}} 300.0" in generate_latest(registry).decode()
    progress["percent"] = 96.0
    now[0] = 401.0
    assert f"clm_migration_stalled_seconds{{{at}}} 0.0" in generate_latest(registry).decode()


def test_ended_moves_count_by_strategy_outcome_and_failed_stage() -> None:
    registry = CollectorRegistry()
    metrics = MoveMetrics(registry, running=lambda: {})
    metrics.ended("Finished", {"strategy": "pre-copy", "freezeSeconds": 0.3, "bytesTransferred": 4096}, 12.0)
    metrics.ended("Failed", {"strategy": "stop-and-copy", "failedStage": "cancel"}, 2.0)
    value = registry.get_sample_value
    assert value("clm_migration_freeze_seconds_bucket", {"strategy": "pre-copy", "le": "0.5"}) == 1.0
    assert value("clm_migration_freeze_seconds_bucket", {"strategy": "pre-copy", "le": "0.25"}) == 0.0
    assert value("clm_migration_transferred_bytes_total", {"strategy": "pre-copy"}) == 4096.0
    assert value("clm_migration_failures_total", {"stage": "cancel"}) == 1.0
    assert value("clm_migration_duration_seconds_count", {"outcome": "failed"}) == 1.0
