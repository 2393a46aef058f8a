"""How memory moves: the strategy for a migration and when pre-copy stops (pure logic).

Strategy (from the request and both nodes' capabilities):
- auto: pre-copy where the source has dirty-memory tracking, else stop-and-copy.
- pre-copy without dirty tracking (these machines, ARM64): stop-and-copy, reconfigured.
- post-copy needs both nodes able (NodeCapabilities.post_copy: userfaultfd, the pipe size
  CRIU's page server needs, the agents' page relay), else stop-and-copy, reconfigured.
  `auto` picks post-copy only where the cluster opts in (CLM_POST_COPY_AUTO), for a pod
  with at least CLM_POST_COPY_AUTO_MIN_MIB of memory, and both nodes can.
Whatever is chosen, a migration that will not pre-dump says so with PreDumpSkipped, so
every migration's events begin either with pre-dump rounds or with that one event.

Convergence: pre-copy rounds continue until a round writes few pages (converged), stops
shrinking (the workload dirties memory as fast as it is copied), or the cap is reached.
A failed round ends pre-copy: the migration continues as stop-and-copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clm.contracts import MigrationReason, MigrationStrategy, NodeCapabilities


@dataclass(frozen=True)
class StrategyChoice:
    strategy: MigrationStrategy
    # (reason, why) in the order they are to be published.
    events: list[tuple[MigrationReason, str]] = field(default_factory=list)
    # Set when the migration cannot start at all (no working agent on a node).
    problem: str | None = None


@dataclass(frozen=True)
class AutoPostCopy:
    """The cluster's setting for `auto`: post-copy for pods with at least this much memory
    (None: never). The pod's memory is its limits (else requests)."""

    min_bytes: int | None = None
    pod_bytes: int = 0

    def allowed(self) -> bool:
        return self.min_bytes is not None and self.pod_bytes >= self.min_bytes


def strategy_for(
    requested: MigrationStrategy,
    capabilities: dict[str, NodeCapabilities | None],
    *,
    source: str,
    destination: str,
    auto_post_copy: AutoPostCopy | None = None,
) -> StrategyChoice:
    """The strategy a migration runs with, from what was requested and what both nodes' agents
    published (None: nothing), and the events that say so."""
    for node in (source, destination):
        caps = capabilities.get(node)
        if caps is None or not caps.probe_ok:
            found = "no capabilities published" if caps is None else caps.problems
            return StrategyChoice(
                MigrationStrategy.STOP_AND_COPY,
                problem=f"node {node} has no working checkpoint agent ({found})",
            )
    source_caps, destination_caps = capabilities[source], capabilities[destination]
    assert source_caps is not None and destination_caps is not None
    return choose_strategy(requested, source_caps, destination_caps, auto_post_copy or AutoPostCopy())


def choose_strategy(
    requested: MigrationStrategy,
    source: NodeCapabilities,
    destination: NodeCapabilities,
    auto_post_copy: AutoPostCopy = AutoPostCopy(),  # noqa: B008 - frozen, never mutated
) -> StrategyChoice:
    tracking = source.dirty_memory_tracking
    no_tracking = (
        f"dirty-memory tracking is unavailable on {source.node} ({source.arch}); "
        "memory moves in one final dump"
    )
    if requested == MigrationStrategy.AUTO:
        if auto_post_copy.allowed() and source.post_copy and destination.post_copy:
            size, threshold = auto_post_copy.pod_bytes >> 20, (auto_post_copy.min_bytes or 0) >> 20
            why = f"auto: post-copy for a pod of {size} MiB (the cluster allows it from {threshold} MiB)"
            return StrategyChoice(MigrationStrategy.POST_COPY, [(MigrationReason.PRE_DUMP_SKIPPED, why)])
        if tracking:
            return StrategyChoice(MigrationStrategy.PRE_COPY)
        return StrategyChoice(
            MigrationStrategy.STOP_AND_COPY, [(MigrationReason.PRE_DUMP_SKIPPED, no_tracking)]
        )
    if requested == MigrationStrategy.PRE_COPY:
        if tracking:
            return StrategyChoice(MigrationStrategy.PRE_COPY)
        return StrategyChoice(
            MigrationStrategy.STOP_AND_COPY,
            [
                (MigrationReason.PRE_DUMP_SKIPPED, no_tracking),
                (
                    MigrationReason.MIGRATION_RECONFIGURED,
                    "pre-copy requested but not possible: " "continuing as stop-and-copy",
                ),
            ],
        )
    if requested == MigrationStrategy.POST_COPY:
        unable = next(
            (
                f"{n.node}: {n.post_copy_problem or 'no post-copy'}"
                for n in (source, destination)
                if not n.post_copy
            ),
            None,
        )
        if unable is None:
            return StrategyChoice(
                MigrationStrategy.POST_COPY,
                [
                    (
                        MigrationReason.PRE_DUMP_SKIPPED,
                        "post-copy: memory is served on demand after the restore",
                    )
                ],
            )
        return StrategyChoice(
            MigrationStrategy.STOP_AND_COPY,
            [
                (MigrationReason.PRE_DUMP_SKIPPED, f"post-copy is unavailable ({unable})"),
                (
                    MigrationReason.MIGRATION_RECONFIGURED,
                    f"post-copy requested but not possible ({unable}): continuing as stop-and-copy",
                ),
            ],
        )
    return StrategyChoice(
        MigrationStrategy.STOP_AND_COPY, [(MigrationReason.PRE_DUMP_SKIPPED, "stop-and-copy requested")]
    )


@dataclass(frozen=True)
class Round:
    number: int
    pages: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class ConvergenceRule:
    max_rounds: int = 8
    # A round that writes at most this many pages has converged (4 MiB of 4 KiB pages).
    few_pages: int = 1024
    # A round writing more than this share of the previous round's pages is not shrinking.
    shrink_ratio: float = 0.8


@dataclass(frozen=True)
class Verdict:
    another_round: bool
    why: str


def next_round(rounds: list[Round], rule: ConvergenceRule | None = None) -> Verdict:
    rule = rule or ConvergenceRule()
    if not rounds:
        return Verdict(another_round=True, why="first round")
    last = rounds[-1]
    if last.pages <= rule.few_pages:
        return Verdict(
            another_round=False,
            why=f"converged: round {last.number} wrote {last.pages} pages " f"(at most {rule.few_pages})",
        )
    if len(rounds) >= 2 and last.pages > rounds[-2].pages * rule.shrink_ratio:
        return Verdict(
            another_round=False,
            why=f"not shrinking: round {last.number} wrote {last.pages} pages after "
            f"{rounds[-2].pages}; the workload dirties memory as fast as it moves",
        )
    if len(rounds) >= rule.max_rounds:
        return Verdict(another_round=False, why=f"reached the cap of {rule.max_rounds} rounds")
    return Verdict(another_round=True, why=f"round {last.number} wrote {last.pages} pages; still shrinking")


def after_failed_round(number: int, error: str) -> list[tuple[MigrationReason, str]]:
    """A failed pre-dump round ends pre-copy; the migration continues as stop-and-copy."""
    return [
        (MigrationReason.PRE_DUMP_FAILED, f"round {number}: {error}"),
        (
            MigrationReason.MIGRATION_RECONFIGURED,
            f"pre-dump round {number} failed: continuing as stop-and-copy",
        ),
    ]
