from __future__ import annotations

from tools.benchmarks.migrate import _ratios, fill_against_channel, stalled_seconds


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


def test_fill_against_channel_takes_every_post_copy_path() -> None:
    rows = [
        {"state_mib": 256, "path": "post-copy", "risk_window_s": 2.0, "pages_mib": 256.0},
        {"state_mib": 256, "path": "containerd post-copy", "risk_window_s": 4.0, "pages_mib": 256.0},
        {"state_mib": 256, "path": "stop-and-copy", "risk_window_s": 0.0, "pages_mib": 0.0},
    ]
    ratios = fill_against_channel(rows, [{"state_mib": 256, "channel_mib_per_s": 128.0}])
    assert [(r["path"], r["fill_over_channel"]) for r in ratios] == [
        ("post-copy", 1.0),
        ("containerd post-copy", 2.0),
    ]
