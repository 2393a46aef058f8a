from tools.benchmarks.events import run_case


def test_events_benchmark_measures_a_small_run() -> None:
    row = run_case("NodeDrained", 200, 32, 16)
    assert row["events"] == 200
    assert row["published_per_s"] > 0 and row["consumed_per_s"] > 0
    assert 0 < row["p50_latency_ms"] <= row["p99_latency_ms"] <= row["max_latency_ms"]
