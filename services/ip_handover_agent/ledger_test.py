from pathlib import Path

from services.ip_handover_agent.ledger import Ledger, Record, reconcile_actions


def test_records_follow_actions_and_final_actions_remove_them(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.begin("u1", "10.0.0.5", "prepare")
    assert ledger.get("u1") == Record("u1", "10.0.0.5", state="", pending="prepare")
    ledger.finish("u1", "prepare")
    assert ledger.get("u1") == Record("u1", "10.0.0.5", state="prepared", pending=None)
    ledger.begin("u1", "10.0.0.5", "announce")
    ledger.finish("u1", "announce")
    record = ledger.get("u1")
    assert record is not None and record.state == "announced"
    ledger.begin("u1", "10.0.0.5", "release")
    record = ledger.get("u1")
    assert record is not None and record.pending == "release"
    ledger.finish("u1", "release")
    assert ledger.get("u1") is None and ledger.all() == []


def test_restart_finishes_interrupted_actions_and_repairs_drift() -> None:
    records = [
        Record("a", "10.0.0.1", state="prepared", pending="abort"),  # crashed mid-abort
        Record("b", "10.0.0.2", state="", pending="prepare"),  # crashed mid-prepare
        Record("c", "10.0.0.3", state="announced"),  # route lost: announce again
        Record("d", "10.0.0.4", state="announced"),  # fine
        Record("e", "10.0.0.5", state="withdrawn"),  # route came back: withdraw again
        Record("f", "10.0.0.6", state="prepared"),  # waiting for commit or abort: leave
    ]
    actions = reconcile_actions(records, routed_ips={"10.0.0.4", "10.0.0.5"})
    assert [(action, r.uid) for action, r in actions] == [
        ("abort", "a"),
        ("prepare", "b"),
        ("announce", "c"),
        ("withdraw", "e"),
    ]


def test_nothing_to_do_on_a_clean_node(tmp_path: Path) -> None:
    assert reconcile_actions(Ledger(tmp_path / "none").all(), set()) == []
