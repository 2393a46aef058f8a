"""The checkpoint agent's Prometheus metrics (clm_checkpoint_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.step_seconds = Histogram(
            "clm_checkpoint_step_seconds",
            "Time to execute a checkpoint step.",
            ["step", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.phase_seconds = Histogram(
            "clm_checkpoint_phase_seconds",
            "Per-phase time of dumps and restores (freezing, frozen, memdump, memwrite, transfer, restore).",
            ["phase"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.bytes_sent = Counter(
            "clm_checkpoint_bytes_sent_total", "Checkpoint image bytes streamed to other agents.", registry=r
        )
        self.bytes_received = Counter(
            "clm_checkpoint_bytes_received_total",
            "Checkpoint image bytes received from other agents.",
            registry=r,
        )
        self.pages_sent = Counter(
            "clm_checkpoint_post_copy_bytes_sent_total",
            "Post-copy memory bytes this agent's page relay carried to destinations.",
            registry=r,
        )
        self.pages_written = Counter(
            "clm_checkpoint_pages_written_total", "Memory pages CRIU wrote in dumps.", registry=r
        )

    def observe(self, step: str, *, ok: bool, seconds: float, details: dict) -> None:
        self.step_seconds.labels(step=step, outcome="ok" if ok else "failed").observe(seconds)
        if not ok or details.get("repeated"):
            return
        for key, value in details.items():
            if key.endswith("_seconds") and isinstance(value, int | float):
                self.phase_seconds.labels(phase=key.removesuffix("_seconds")).observe(value)
        if step == "dump":
            self.bytes_sent.inc(float(details.get("bytes", 0)))
            self.pages_written.inc(float(details.get("pages_written", 0)))
