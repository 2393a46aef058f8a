from tools.sandbox import binpack

BEFORE = {
    "game-0": ("sbx-1", "10.215.0.65"),
    "game-1": ("sbx-2", "10.215.0.66"),
    "web-6d4cf56db6-k7x2p": ("sbx-1", "10.215.0.70"),
    "web-6d4cf56db6-q9r4s": ("sbx-3", "10.215.0.69"),
    "report": ("sbx-1", "10.215.0.67"),
    "ledger": ("sbx-3", "10.215.0.64"),
    "reserved-sbx-2": ("sbx-2", "10.215.0.68"),
}


def after(**changes: tuple[str, str] | None) -> dict[str, tuple[str, str]]:
    out = {k: v for k, v in BEFORE.items() if k not in ("game-0", "web-6d4cf56db6-k7x2p", "report")}
    out.update({"game-0": ("sbx-2", "10.215.0.65"), "web-6d4cf56db6-k7x2p-clone-1": ("sbx-3", "10.215.0.70")})
    for name, value in changes.items():
        if value is None:
            out.pop(name.replace("_", "-"), None)
        else:
            out[name.replace("_", "-")] = value
    return out


def test_the_expected_drain_reads_as_moved_evicted_stayed() -> None:
    rows = binpack.outcome_rows(BEFORE, after())
    what = {r["pod"]: r["what"] for r in rows}
    assert what["game-0"] == "moved live, same IP"
    assert what["web-6d4cf56db6-k7x2p"] == "moved live, same IP"
    assert what["report"] == "evicted"
    assert what["ledger"] == "stayed"
    assert binpack.as_expected(rows)


def test_a_new_ip_a_lost_pod_or_a_moved_bystander_is_not_the_expected_drain() -> None:
    assert not binpack.as_expected(binpack.outcome_rows(BEFORE, after(game_0=("sbx-2", "10.215.0.90"))))
    assert not binpack.as_expected(binpack.outcome_rows(BEFORE, after(game_0=None)))
    assert not binpack.as_expected(binpack.outcome_rows(BEFORE, after(ledger=("sbx-2", "10.215.0.64"))))
    assert not binpack.as_expected(binpack.outcome_rows(BEFORE, after(report=("sbx-1", "10.215.0.67"))))
