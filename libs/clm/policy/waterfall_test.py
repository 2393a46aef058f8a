from clm.policy.waterfall import waterfall


def test_the_phases_add_up_to_the_freeze_and_the_rest_is_coordination() -> None:
    dump = {
        "freezing_seconds": 0.01,
        "frozen_seconds": 0.30,
        "memdump_seconds": 0.05,
        "memwrite_seconds": 0.15,
        "dump_seconds": 0.41,
        "package_seconds": 0.02,
        "transfer_seconds": 0.20,
    }
    restore = {"unpack_seconds": 0.03, "runtime_restore_seconds": 0.25, "restore_seconds": 0.30}
    rows = waterfall(dump, restore, commit_seconds=0.04, frozen_seconds=1.2)
    by_phase = {r["phase"]: r["seconds"] for r in rows}
    assert [r["phase"] for r in rows][:3] == ["freeze", "dump_state", "memory"]
    assert by_phase["memory"] == 0.2 and by_phase["dump_state"] == 0.1 and by_phase["runtime"] == 0.1
    assert round(sum(float(r["seconds"]) for r in rows), 4) == 1.2
    assert by_phase["coordination"] == round(
        1.2 - 0.01 - 0.1 - 0.2 - 0.1 - 0.02 - 0.2 - 0.03 - 0.25 - 0.04, 4
    )


def test_missing_stats_count_as_zero_and_coordination_never_goes_negative() -> None:
    rows = waterfall({}, {"restore_seconds": 0.5}, commit_seconds=0.1, frozen_seconds=0.3)
    by_phase = {r["phase"]: r["seconds"] for r in rows}
    assert by_phase["restore"] == 0.5 and by_phase["coordination"] == 0.0
