"""Prometheus metrics of the moves a coordinator replica drives: the running ones as they go
(bytes done and left, rates, freeze so far; from each run's `status.progress`), the ended ones
as histograms and counters (freeze, duration, bytes, failures by stage).

Running moves are labelled by namespace and migration: only the few in flight are exported, and
a move's series end with it. Ended moves are labelled by strategy and outcome only."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clm.contracts import MigrationStrategy

# The freeze users feel: from tens of milliseconds (post-copy) to minutes (a large pod frozen
# whole on a slow link).
FREEZE_BUCKETS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

STRATEGIES = [str(s) for s in MigrationStrategy if s != MigrationStrategy.AUTO]
OUTCOMES = ("finished", "failed")
# What the collector reads of each running move: its status.
Statuses = Callable[[], Mapping[str, Mapping[str, Any]]]


class RunningMoves(Collector):
    """Gauges over the moves in flight, read from their status at each scrape; and how long
    each has gone without moving forward (for the "stuck" alert), tracked here."""

    def __init__(self, statuses: Statuses, clock: Callable[[], float] = time.monotonic) -> None:
        self.statuses, self.clock = statuses, clock
        # Per move: what its progress last was, and since when.
        self._last: dict[str, tuple[tuple[object, ...], float]] = {}

    def _stalled(self, key: str, progress: Mapping[str, Any]) -> float:
        now = self.clock()
        seen = (progress.get("step"), progress.get("percent"), progress.get("bytesMoved"))
        before = self._last.get(key)
        if before is None or before[0] != seen:
            self._last[key] = (seen, now)
            return 0.0
        return now - before[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace", "migration", "step"]
        families = {
            "done": GaugeMetricFamily(
                "clm_migration_transfer_done_bytes", "Bytes the current transfer has moved.", labels=labels
            ),
            "left": GaugeMetricFamily(
                "clm_migration_transfer_remaining_bytes",
                "Bytes the current transfer has still to move (0 when its size is not known yet).",
                labels=labels,
            ),
            "moved": GaugeMetricFamily(
                "clm_migration_moved_bytes",
                "Bytes all the move's transfers have moved so far.",
                labels=labels,
            ),
            "rate": GaugeMetricFamily(
                "clm_migration_transfer_rate_bytes_per_second", "The current transfer's rate.", labels=labels
            ),
            "dirty": GaugeMetricFamily(
                "clm_migration_dirty_rate_bytes_per_second",
                "Pre-copy: how fast the pod wrote memory during the last round.",
                labels=labels,
            ),
            "percent": GaugeMetricFamily(
                "clm_migration_progress_ratio", "How far the move is, 0 to 1; never goes back.", labels=labels
            ),
            "frozen": GaugeMetricFamily(
                "clm_migration_frozen_seconds", "The freeze so far (from the final dump).", labels=labels
            ),
            "stalled": GaugeMetricFamily(
                "clm_migration_stalled_seconds",
                "How long the move has gone without progress (step, percent and bytes unchanged).",
                labels=labels,
            ),
        }
        statuses = self.statuses()
        for gone in set(self._last) - set(statuses):
            del self._last[gone]
        for key, status in statuses.items():
            progress = status.get("progress") or {}
            if not progress:
                continue
            namespace, _, name = key.partition("/")
            at = [namespace, name, str(progress.get("step", ""))]
            done, total = int(progress.get("bytesDone", 0)), int(progress.get("bytesTotal", 0))
            families["done"].add_metric(at, done)
            families["left"].add_metric(at, max(0, total - done))
            families["moved"].add_metric(at, int(progress.get("bytesMoved", 0)))
            families["rate"].add_metric(at, float(progress.get("bytesPerSecond", 0)))
            if "dirtyBytesPerSecond" in progress:
                families["dirty"].add_metric(at, float(progress["dirtyBytesPerSecond"]))
            families["percent"].add_metric(at, float(progress.get("percent", 0)) / 100)
            if "frozenSeconds" in progress:
                families["frozen"].add_metric(at, float(progress["frozenSeconds"]))
            families["stalled"].add_metric(at, self._stalled(key, progress))
        yield from families.values()


class MoveMetrics:
    def __init__(
        self, registry: CollectorRegistry, running: Statuses, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.freeze = Histogram(
            "clm_migration_freeze_seconds",
            "How long each finished move kept its pod frozen.",
            ["strategy"],
            buckets=FREEZE_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "clm_migration_duration_seconds",
            "From the Migration's start to its end, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.transferred = Counter(
            "clm_migration_transferred_bytes_total",
            "Bytes of images the finished moves carried (pre-copy rounds included).",
            ["strategy"],
            registry=registry,
        )
        self.failures = Counter(
            "clm_migration_failures_total",
            "Failed moves by the step that failed (cancel: deleted before the commit point).",
            ["stage"],
            registry=registry,
        )
        registry.register(RunningMoves(running, clock))
        # Every series from the start at 0, so `increase()` counts a first move too (a series
        # born at 1 has no increase).
        for strategy in STRATEGIES:
            self.freeze.labels(strategy=strategy)
            self.transferred.labels(strategy=strategy)
        for outcome in OUTCOMES:
            self.duration.labels(outcome=outcome)

    def ended(self, outcome: str, status: Mapping[str, Any], seconds: float) -> None:
        """A run ended with `outcome` (Finished / Failed) and this status."""
        self.duration.labels(outcome=outcome.lower()).observe(seconds)
        strategy = str(status.get("strategy") or "unknown")
        if outcome == "Finished":
            self.freeze.labels(strategy=strategy).observe(float(status.get("freezeSeconds", 0)))
            moved = (status.get("progress") or {}).get("bytesMoved") or status.get("bytesTransferred", 0)
            self.transferred.labels(strategy=strategy).inc(int(moved))
        elif outcome == "Failed":
            self.failures.labels(stage=str(status.get("failedStage") or "unknown")).inc()
