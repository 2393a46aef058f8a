"""tools/bench plan: the Evictor's bin-packing plan at Kubernetes' documented limits.

Clusters of 500 and 5,000 nodes with 30 pods each (up to 150,000 pods), 5-95 % full, a
realistic label mix. Time is for `binpack.plan` on one core (median of 3 runs), input
already digested from the API (the planner service's cache). A second table compares
the greedy plan with CP-SAT's proven optimum on small random clusters.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from clm.policy.binpack import PlannerConfig, plan
from clm.policy.evictor import Mode
from tests.kit.clusters import dense_cluster, random_cluster
from tests.kit.exact import max_drained

Table = tuple[str, list[dict[str, Any]]]


def timing_rows(sizes: tuple[int, ...], runs: int) -> list[dict[str, Any]]:
    rows = []
    for nodes in sizes:
        snap = dense_cluster(random.Random(nodes), nodes=nodes)
        for mode in Mode:
            config = PlannerConfig(mode=mode)
            seconds = []
            result = None
            for _ in range(runs):
                started = time.perf_counter()
                result = plan(snap, config)
                seconds.append(time.perf_counter() - started)
            assert result is not None
            rows.append(
                {
                    "nodes": nodes,
                    "pods": len(snap.pods),
                    "mode": str(mode),
                    "nodes_drained": len(result.drains),
                    "live_migrations": sum(
                        m.action == "live-migrate" for d in result.drains for m in d.moves
                    ),
                    "evictions": sum(m.action == "evict" for d in result.drains for m in d.moves),
                    "plan_seconds_median": statistics.median(seconds),
                    "plan_seconds_max": max(seconds),
                    "goal_seconds": 2.0 if nodes >= 5000 else "",
                }
            )
    return rows


def gap_rows(clusters: int) -> list[dict[str, Any]]:
    rows = []
    for mode in Mode:
        config = PlannerConfig(mode=mode)
        greedy = optimum = below = 0
        for seed in range(clusters):
            rng = random.Random(seed)
            snap = random_cluster(rng, nodes=rng.randint(2, 8), pods_per_node=6, fill=rng.uniform(0.2, 0.9))
            g, best = len(plan(snap, config).drains), max_drained(snap, config)
            greedy += g
            optimum += best
            below += g < best
        rows.append(
            {
                "mode": str(mode),
                "clusters": clusters,
                "greedy_nodes_freed": greedy,
                "optimal_nodes_freed": optimum,
                "gap_percent": 100 * (1 - greedy / optimum),
                "clusters_below_optimum": below,
            }
        )
    return rows


def run(*, quick: bool = False) -> list[Table]:
    sizes, runs, clusters = ((50, 200), 1, 20) if quick else ((500, 5000), 3, 200)
    return [
        ("Bin-packing plan time (30 pods per node, one core)", timing_rows(sizes, runs)),
        ("Greedy plan vs exact optimum (CP-SAT), small random clusters", gap_rows(clusters)),
    ]
