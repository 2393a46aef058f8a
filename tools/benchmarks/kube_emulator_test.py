from tools.benchmarks.kube_emulator import run


def test_emulator_benchmark_runs_quick() -> None:
    (_, lists), (_, watches) = run(quick=True)
    # Every stored pod listed exactly once, whole or page by page.
    assert [(row["pods"], row["distinct_pods"]) for row in lists] == [(3000, 3000)] * 3
    # Every change seen on the watch, once.
    assert watches[0]["changes_seen"] == 500 and watches[0]["events_seen"] == 500
