from tools.benchmarks.events import run_case


def test_events_benchmark_measures_a_small_run() -> None:
    row = run_case("NodeDrained", 200, 32, 16)
    # Every published event reached the handler, once: none lost, none twice.
    assert row["distinct_handled"] == 200 and row["handled"] == 200
    assert 0 < row["p50_latency_ms"] <= row["p99_latency_ms"] <= row["max_latency_ms"]
