from __future__ import annotations

from tools.benchmarks.migrate import _ratios, stalled_seconds


def test_stalled_time_adds_up_every_gap_the_largest_gap_would_hide() -> None:
    # CLM at 1 GiB, measured: one answer in the middle of the freeze splits it in two.
    assert stalled_seconds([[193.922, 2.837], [197.782, 3.8602]]) == 6.697
    assert stalled_seconds([]) == 0.0


def test_ratios_side_by_side() -> None:
    rows = [
        {"state_mib": 1024, "path": "stop-and-copy", "interruption_s": 3.0, "stalled_s": 6.0, "total_s": 8.0},
        {"state_mib": 1024, "path": "naive", "interruption_s": 6.0, "stalled_s": 6.0, "total_s": 8.0},
    ]
    assert _ratios(rows) == [
        {
            "state_mib": 1024,
            "interruption_clm_over_naive": 0.5,
            "stalled_clm_over_naive": 1.0,
            "total_clm_over_naive": 1.0,
            "goal": "<= 0.5 stalled",
        }
    ]
