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
shrinking or shows the pod dirtying memory at least as fast as the channel carries it (then
post-copy where the cluster allows it, else the freeze comes now: as stop-and-copy where
the final dump would hold nearly all the memory), or the cap is reached. The agent counts
the pages the pod wrote during a round's transfer, so a round that would not converge is
known before it runs.
A failed round ends pre-copy: the migration continues as stop-and-copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clm.contracts import MigrationReason, MigrationStrategy, NodeCapabilities
from clm.policy.details import count
from clm.policy.details import number as measured


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


PAGE = 4096


@dataclass(frozen=True)
class Round:
    number: int
    pages: int
    bytes: int
    # The round from its command to its answer: the dump while the pod runs, then the transfer.
    seconds: float
    # The transfer alone (the channel's rate is bytes over it); 0: unknown.
    transfer_seconds: float = 0.0
    # The pages the pod wrote from this round's copy to the end of its transfer (the kernel's
    # soft-dirty bits, counted by the agent), over `dirtied_seconds`: what the next round
    # would copy. None: not counted.
    dirtied: int | None = None
    dirtied_seconds: float = 0.0

    @classmethod
    def from_details(cls, number: int, details: Mapping[str, object], seconds: float) -> Round:
        """A round from the pre-dump step's answer (the checkpoint agent's details)."""
        return cls(
            number,
            count(details, "pages_written"),
            count(details, "bytes"),
            seconds,
            measured(details, "transfer_seconds"),
            count(details, "pages_dirtied_since") if "pages_dirtied_since" in details else None,
            measured(details, "dirtied_seconds"),
        )


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
    # Pre-copy cannot converge and the cluster allows post-copy: the final dump goes
    # post-copy (MigrationReconfigured says so).
    post_copy: bool = False
    # Pre-copy cannot converge and the final dump would hold nearly all the pod's memory:
    # the rounds saved nothing, so the move freezes as stop-and-copy does (a plain dump and
    # restore, no stacked rounds; MigrationReconfigured says so).
    stop_and_copy: bool = False


def _mib_per_s(size: int, seconds: float) -> float:
    return size / seconds / 2**20 if seconds > 0 else float("inf")


def _not_converging(rounds: list[Round], rule: ConvergenceRule) -> str | None:
    """Why the rounds cannot converge, or None. With the pages the pod wrote during the last
    round counted, that is known now; without, only once the next round has run."""
    last = rounds[-1]
    if last.dirtied is not None:
        ahead = last.dirtied
        if ahead > last.pages * rule.shrink_ratio:
            return (
                f"not shrinking: the pod wrote {ahead} pages while round {last.number} "
                f"({last.pages} pages) was copied; the workload dirties memory as fast as it moves"
            )
        dirty = _mib_per_s(ahead * PAGE, last.dirtied_seconds)
        channel = _mib_per_s(last.bytes, last.transfer_seconds) if last.transfer_seconds else None
        if channel is not None and dirty >= channel:
            return (
                f"not converging: the pod dirties {dirty:.0f} MiB/s and the channel carries "
                f"{channel:.0f} MiB/s ({ahead} pages written since round {last.number})"
            )
        return None
    if len(rounds) < 2:
        return None
    before = rounds[-2]
    dirty = _mib_per_s(last.bytes, before.seconds)
    channel = _mib_per_s(last.bytes, last.transfer_seconds) if last.transfer_seconds else None
    if channel is not None and dirty >= channel:
        return (
            f"not converging: the pod dirties {dirty:.0f} MiB/s and the channel carries "
            f"{channel:.0f} MiB/s (round {last.number}: {last.pages} pages)"
        )
    if last.pages > before.pages * rule.shrink_ratio:
        return (
            f"not shrinking: round {last.number} wrote {last.pages} pages after {before.pages}; "
            "the workload dirties memory as fast as it moves"
        )
    return None


def next_round(
    rounds: list[Round], rule: ConvergenceRule | None = None, *, post_copy_allowed: bool = False
) -> Verdict:
    """Whether pre-copy goes on after `rounds`, and why.

    The next round copies what the pod wrote while the last one ran: counted by the agent
    after the last transfer where it can (`Round.dirtied`), else seen only in the next
    round's pages (then round n's bytes over round n-1's time are the pod's dirty rate).
    Few pages ahead: converged, the final dump will be small. The rounds cannot converge
    when they stop shrinking, or when the pod dirties memory at least as fast as the channel
    carries it (the next round could not be smaller); then the move goes post-copy where
    allowed, else it stops pre-copying and freezes now, before more rounds add time and
    nothing else, as stop-and-copy where the final dump would hold nearly all the memory."""
    rule = rule or ConvergenceRule()
    if not rounds:
        return Verdict(another_round=True, why="first round")
    last = rounds[-1]
    if last.pages <= rule.few_pages:
        return Verdict(
            another_round=False,
            why=f"converged: round {last.number} wrote {last.pages} pages (at most {rule.few_pages})",
        )
    if last.dirtied is not None and last.dirtied <= rule.few_pages:
        return Verdict(
            another_round=False,
            why=(
                f"converged: the pod wrote {last.dirtied} pages while round {last.number} was "
                f"copied (at most {rule.few_pages})"
            ),
        )
    stuck = _not_converging(rounds, rule)
    if stuck is not None:
        if post_copy_allowed:
            return Verdict(another_round=False, why=f"{stuck}: continuing as post-copy", post_copy=True)
        final = last.dirtied if last.dirtied is not None else last.pages
        whole = rounds[0].pages
        if final > whole * rule.shrink_ratio:
            return Verdict(
                another_round=False,
                why=(
                    f"{stuck}: the final dump would hold {final} of the pod's {whole} pages, "
                    "so it freezes as stop-and-copy"
                ),
                stop_and_copy=True,
            )
        return Verdict(another_round=False, why=stuck)
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
