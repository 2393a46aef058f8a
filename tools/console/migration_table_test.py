import io
from datetime import UTC, datetime

from rich.console import Console

from tools.console.migration_table import COLUMNS, age, rows, table

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def migration(name: str, created: str, **status: object) -> dict:
    return {
        "metadata": {"name": name, "namespace": "db", "creationTimestamp": created, "uid": name},
        "spec": {"podName": f"{name}-pod"},
        "status": {"sourceNode": "a", "destinationNode": "b", **status},
    }


def test_rows_are_oldest_first_with_the_move_as_it_runs() -> None:
    running = migration(
        "new",
        "2026-12-02T11:59:30Z",
        phase="Dumping",
        progress={"step": "dump", "percent": 50.0, "bytesMoved": 2**20},
    )
    done = migration("old", "2026-12-02T10:00:00Z", phase="Finished", freezeSeconds=0.31)
    got = rows([running, done], NOW)
    assert [r[1] for r in got] == ["old", "new"]
    assert dict(zip(COLUMNS, got[1], strict=True)) == {
        "NAMESPACE": "db",
        "NAME": "new",
        "POD": "new-pod",
        "PHASE": "Dumping",
        "STEP": "dump",
        "PROGRESS": "50%",
        "MOVED": "1.0 MiB",
        "RATE": "",
        "ETA": "",
        "FREEZE": "",
        "FROM": "a",
        "TO": "b",
        "AGE": "30s",
    }
    assert dict(zip(COLUMNS, got[0], strict=True))["FREEZE"] == "310ms"
    assert dict(zip(COLUMNS, got[0], strict=True))["AGE"] == "2h"


def test_a_deleted_migration_says_so_and_an_empty_table_says_none() -> None:
    deleting = migration("m", "2026-12-02T11:00:00Z", phase="Restoring")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-02T11:59:00Z"
    assert rows([deleting], NOW)[0][3] == "Restoring (deleting)"
    out = io.StringIO()
    Console(file=out, width=200).print(table([], NOW))
    assert "no migrations" in out.getvalue() and "PROGRESS" in out.getvalue()
    assert age(None, NOW) == "" and age("2026-11-30T12:00:00Z", NOW) == "2d"
