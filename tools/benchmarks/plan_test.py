from tools.benchmarks.plan import run


def test_plan_benchmark_runs_quick() -> None:
    (timing_title, timing), (gap_title, gaps) = run(quick=True)
    assert {row["nodes"] for row in timing} == {50, 200}
    assert all(row["plan_seconds_median"] > 0 and row["nodes_drained"] >= 0 for row in timing)
    assert all(0 <= row["gap_percent"] <= 100 for row in gaps)
    assert "optimum" in gap_title.lower()
