import io

from tools.console.move_view import LiveBar, PlainLines, describe, human_bytes, move_view


def dumping(percent: float, done: int) -> dict:
    return {
        "phase": "Dumping",
        "message": "freezing and dumping the pod on a",
        "progress": {
            "step": "dump",
            "percent": percent,
            "bytesDone": done,
            "bytesTotal": 256 * 2**20,
            "bytesMoved": done,
            "bytesPerSecond": 100 * 2**20,
            "etaSeconds": 1.5,
            "frozenSeconds": 0.42,
        },
    }


def test_the_parts_read_as_people_read_them() -> None:
    shown = describe(dumping(63.4, 128 * 2**20))
    assert shown["percent"] == "63%" and shown["moved"] == "128.0 MiB/256.0 MiB"
    assert shown["rate"] == "100.0 MiB/s" and shown["eta"] == "1.5s" and shown["frozen"] == "420ms"
    fill = describe(
        {"phase": "Finalizing", "progress": {"step": "fill", "pagesOnDestination": 10, "pagesTotal": 40}}
    )
    assert fill["moved"] == "10/40 pages"
    assert describe({})["phase"] == "Pending" and describe({})["percent"] == ""
    assert human_bytes(512) == "512 B" and human_bytes(3 * 2**30) == "3.0 GiB"


def test_plain_lines_say_each_phase_and_each_tenth_not_every_write() -> None:
    out = io.StringIO()
    view = PlainLines(out)
    for percent in (50.0, 51.0, 52.0, 61.0):
        view.show(dumping(percent, int(percent) * 2**20))
    view.show({"phase": "Finished", "message": "done", "progress": {"percent": 100.0}})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("  Dumping 50%: freezing") and "MiB/s" in lines[0]
    assert lines[-1] == "  Finished 100%: done"


def test_a_terminal_gets_the_live_bar_and_a_pipe_gets_lines() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = move_view(terminal)
    assert isinstance(bar, LiveBar)
    bar.show(dumping(63.0, 128 * 2**20))
    bar.close()
    assert "Dumping" in terminal.getvalue() and "128.0 MiB/256.0 MiB" in terminal.getvalue()
    assert isinstance(move_view(io.StringIO()), PlainLines)
