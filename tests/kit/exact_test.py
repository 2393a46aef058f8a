"""The greedy planner against the exact optimum on small random clusters."""

import random

from clm.policy.binpack import PlannerConfig, plan
from clm.policy.evictor import Mode
from tests.kit.clusters import random_cluster
from tests.kit.exact import max_drained


def gap_report(seeds: range, mode: Mode) -> tuple[int, int, int]:
    greedy_total = optimum_total = worse = 0
    config = PlannerConfig(mode=mode)
    for seed in seeds:
        rng = random.Random(seed)
        snap = random_cluster(rng, nodes=rng.randint(2, 7), pods_per_node=6, fill=rng.uniform(0.2, 0.9))
        greedy = len(plan(snap, config).drains)
        optimum = max_drained(snap, config)
        assert greedy <= optimum, f"seed {seed}: greedy {greedy} > optimum {optimum}: invalid plan"
        greedy_total += greedy
        optimum_total += optimum
        worse += greedy < optimum
    return greedy_total, optimum_total, worse


def test_greedy_is_close_to_the_exact_optimum() -> None:
    for mode in Mode:
        greedy, optimum, worse = gap_report(range(120), mode)
        gap = 1 - greedy / optimum
        print(
            f"{mode}: greedy freed {greedy} nodes, optimum {optimum} (gap {gap:.1%}, "
            f"{worse}/120 clusters below optimum)"
        )
        assert optimum > 50, "the random clusters should leave room to drain"
        assert gap <= 0.10, f"{mode}: greedy frees {greedy} of {optimum} possible nodes ({gap:.1%} gap)"
