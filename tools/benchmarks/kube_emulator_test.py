from tools.benchmarks.kube_emulator import run


def test_emulator_benchmark_runs_quick() -> None:
    (_, lists), (_, watches) = run(quick=True)
    assert [row["pods"] for row in lists] == [3000, 3000, 3000]
    assert watches[0]["changes"] == 500 and watches[0]["events_per_s"] > 0
