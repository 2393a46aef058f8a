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
