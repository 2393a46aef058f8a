import pytest

from clm.contracts import MigrationReason, MigrationStrategy, NodeCapabilities
from clm.policy.precopy import (
    ConvergenceRule,
    Round,
    after_failed_round,
    choose_strategy,
    next_round,
)

R = MigrationReason
S = MigrationStrategy


def caps(node: str, *, tracking: bool = False, uffd: bool = True, arch: str = "amd64") -> NodeCapabilities:
    return NodeCapabilities(
        node=node,
        agent_version="t",
        arch=arch,
        probe_ok=True,
        dirty_memory_tracking=tracking,
        userfaultfd=uffd,
        post_copy=uffd,
    )


@pytest.mark.parametrize(
    ("requested", "tracking", "uffd", "strategy", "reasons"),
    [
        (S.AUTO, True, True, S.PRE_COPY, []),
        (S.AUTO, False, True, S.STOP_AND_COPY, [R.PRE_DUMP_SKIPPED]),  # these machines, ARM64
        (S.PRE_COPY, True, True, S.PRE_COPY, []),
        (S.PRE_COPY, False, True, S.STOP_AND_COPY, [R.PRE_DUMP_SKIPPED, R.MIGRATION_RECONFIGURED]),
        (S.POST_COPY, False, True, S.POST_COPY, [R.PRE_DUMP_SKIPPED]),
        (S.POST_COPY, True, False, S.STOP_AND_COPY, [R.PRE_DUMP_SKIPPED, R.MIGRATION_RECONFIGURED]),
        (S.STOP_AND_COPY, True, True, S.STOP_AND_COPY, [R.PRE_DUMP_SKIPPED]),
    ],
)
def test_strategy_choice(requested, tracking, uffd, strategy, reasons) -> None:
    choice = choose_strategy(requested, caps("src", tracking=tracking), caps("dst", uffd=uffd))
    assert choice.strategy == strategy
    assert [reason for reason, _ in choice.events] == reasons


def test_skip_reason_names_the_node_and_architecture() -> None:
    choice = choose_strategy(S.AUTO, caps("node-a", arch="arm64"), caps("node-b"))
    assert "node-a (arm64)" in choice.events[0][1]


def rounds(*pages: int) -> list[Round]:
    return [Round(i + 1, p, p * 4096, 0.1) for i, p in enumerate(pages)]


@pytest.mark.parametrize(
    ("history", "again", "why"),
    [
        ((), True, "first round"),
        ((100_000,), True, "still shrinking"),
        ((100_000, 40_000, 9_000), True, "still shrinking"),
        ((100_000, 900), False, "converged"),
        ((100_000, 1024), False, "converged"),
        ((100_000, 90_000), False, "not shrinking"),
        ((100_000, 50_000, 45_000), False, "not shrinking"),
        ((2**20, 2**19, 2**18, 2**17), False, "cap of 4"),
    ],
)
def test_convergence_rule(history, again, why) -> None:
    verdict = next_round(rounds(*history), ConvergenceRule(max_rounds=4))
    assert verdict.another_round is again
    assert why in verdict.why


def test_failed_round_reconfigures_to_stop_and_copy() -> None:
    events = after_failed_round(2, "criu pre-dump exited with 1")
    assert [r for r, _ in events] == [R.PRE_DUMP_FAILED, R.MIGRATION_RECONFIGURED]
    assert "stop-and-copy" in events[1][1]


def test_auto_picks_post_copy_only_where_the_cluster_allows_it_for_a_large_pod() -> None:
    from clm.policy.precopy import AutoPostCopy

    big, small = (
        AutoPostCopy(min_bytes=1 << 30, pod_bytes=2 << 30),
        AutoPostCopy(min_bytes=1 << 30, pod_bytes=1 << 20),
    )
    choice = choose_strategy(S.AUTO, caps("src"), caps("dst"), big)
    assert choice.strategy == S.POST_COPY and "2048 MiB" in choice.events[0][1]
    assert choose_strategy(S.AUTO, caps("src"), caps("dst"), small).strategy == S.STOP_AND_COPY
    assert choose_strategy(S.AUTO, caps("src"), caps("dst")).strategy == S.STOP_AND_COPY  # not allowed
    assert choose_strategy(S.AUTO, caps("src"), caps("dst", uffd=False), big).strategy == S.STOP_AND_COPY


def timed(*rounds_: tuple[int, float, float]) -> list[Round]:
    """(pages, round seconds, transfer seconds) per round."""
    return [Round(i + 1, p, p * 4096, s, t) for i, (p, s, t) in enumerate(rounds_)]


def test_a_pod_dirtying_faster_than_the_channel_carries_does_not_converge() -> None:
    # Round 2: 64 MiB written during round 1's 0.5 s (128 MiB/s); sent at 64 MiB/s.
    history = timed((65_536, 0.5, 0.4), (16_384, 1.2, 1.0))
    verdict = next_round(history)
    assert verdict.another_round is False and verdict.post_copy is False
    assert "not converging" in verdict.why and "128 MiB/s" in verdict.why and "64 MiB/s" in verdict.why


def test_a_non_converging_pod_goes_post_copy_where_allowed() -> None:
    history = timed((65_536, 0.5, 0.4), (16_384, 1.2, 1.0))
    verdict = next_round(history, post_copy_allowed=True)
    assert verdict.another_round is False and verdict.post_copy is True
    assert "continuing as post-copy" in verdict.why
    stuck = timed((100_000, 1.0, 0.5), (90_000, 1.0, 0.1))
    assert next_round(stuck, post_copy_allowed=True).post_copy is True


def test_a_converged_pod_never_goes_post_copy() -> None:
    verdict = next_round(timed((65_536, 0.5, 0.4), (900, 0.1, 0.01)), post_copy_allowed=True)
    assert verdict.another_round is False and verdict.post_copy is False and "converged" in verdict.why


def test_a_channel_faster_than_the_dirty_rate_goes_on_shrinking() -> None:
    # 16 MiB written during a 1 s round (16 MiB/s), sent at 160 MiB/s.
    verdict = next_round(timed((65_536, 1.0, 0.8), (4096, 0.2, 0.1)))
    assert verdict.another_round is True


def counted(pages: int, dirtied: int, *, seconds: float = 1.0, transfer: float = 0.5) -> Round:
    """Round 1 of `pages`, with the pages the pod wrote during it counted after its transfer."""
    return Round(1, pages, pages * 4096, seconds, transfer, dirtied, seconds)


def test_few_pages_written_during_round_one_converge_without_another_round() -> None:
    verdict = next_round([counted(262_144, 600)])
    assert verdict.another_round is False and "converged" in verdict.why and "600 pages" in verdict.why


def test_a_pod_rewriting_its_memory_during_round_one_stops_before_round_two() -> None:
    # 250,000 of 262,144 pages written while round 1 was copied: round 2 would not shrink,
    # and a final dump of nearly everything is stop-and-copy's.
    verdict = next_round([counted(262_144, 250_000)])
    assert verdict.another_round is False
    assert verdict.stop_and_copy is True and verdict.post_copy is False
    assert "not shrinking" in verdict.why and "freezes as stop-and-copy" in verdict.why


def test_the_same_pod_goes_post_copy_where_allowed() -> None:
    verdict = next_round([counted(262_144, 250_000)], post_copy_allowed=True)
    assert verdict.post_copy is True and verdict.stop_and_copy is False


def test_a_counted_round_that_shrinks_goes_on() -> None:
    # 20,000 pages (78 MiB) in 10 s: 8 MiB/s written, 2 GiB/s carried.
    assert next_round([counted(262_144, 20_000, seconds=10.0, transfer=0.5)]).another_round is True


def test_a_counted_dirty_rate_above_the_channel_stops_with_a_stacked_final() -> None:
    # Round 2 shrank to 20,000 pages, but the pod wrote 15,000 in 0.4 s (146 MiB/s) while
    # the channel carried round 2's 78 MiB in 1 s: round 3 could not be smaller. The final
    # dump (~15,000 pages) is still far smaller than the pod: it stacks on the rounds.
    first = counted(262_144, 20_000, seconds=10.0, transfer=0.5)
    second = Round(2, 20_000, 20_000 * 4096, 1.0, 1.0, 15_000, 0.4)
    verdict = next_round([first, second])
    assert verdict.another_round is False and verdict.stop_and_copy is False
    assert "not converging" in verdict.why


def test_round_from_the_agents_details() -> None:
    details = {"pages_written": 9, "bytes": 36_864, "transfer_seconds": 0.25}
    assert Round.from_details(2, details, 1.5) == Round(2, 9, 36_864, 1.5, 0.25)
    counted_ = Round.from_details(1, {**details, "pages_dirtied_since": 4, "dirtied_seconds": 2.0}, 1.5)
    assert counted_.dirtied == 4 and counted_.dirtied_seconds == 2.0
