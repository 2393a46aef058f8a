from tools.benchmarks.plan import run


def test_plan_benchmark_runs_quick() -> None:
    (timing_title, timing), (gap_title, gaps) = run(quick=True)
    assert {row["nodes"] for row in timing} == {50, 200}
    # The dense clusters are 5-95 % full: a working planner frees nodes, by moving pods.
    assert all(row["nodes_drained"] > 0 for row in timing)
    assert all(row["live_migrations"] + row["evictions"] > 0 for row in timing)
    # Never better than the proven optimum, and close to it (README: about 1-2 %).
    assert all(0 < row["greedy_nodes_freed"] <= row["optimal_nodes_freed"] for row in gaps)
    assert all(row["gap_percent"] < 10 for row in gaps), gaps
    assert "optimum" in gap_title.lower()
