from __future__ import annotations

import os
import time
from pathlib import Path

from services.checkpoint_agent.container_log import LogLine, LogReader, read_log, render, start_relay


def _wait_for_lines(path: Path, count: int) -> list[LogLine]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = read_log(path)
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has {read_log(path)}; wanted {count} lines")


def test_the_relay_keeps_both_streams_in_cri_format_until_the_writers_are_gone(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "ns_pod_main.log"
    out, err = start_relay(log)
    os.write(out, b"hello\nwor")
    os.write(err, b"oops\n")
    os.write(out, b"ld\n")
    long = b"x" * 40000
    os.write(out, long + b"\nunterminated")
    os.close(out)
    os.close(err)
    lines = _wait_for_lines(log, 5)
    assert [(line.stream, line.text) for line in lines if line.stream == "stdout"] == [
        ("stdout", "hello"),
        ("stdout", "world"),
        ("stdout", long.decode()),  # cut into partial records, joined back
        ("stdout", "unterminated"),  # the last bytes, written when the writer went away
    ]
    assert [line.text for line in lines if line.stream == "stderr"] == ["oops"]
    raw = log.read_text().splitlines()
    assert any(" stdout P " in r for r in raw), "a 40 KB line is stored as partial records"
    stamp = raw[0].split(" ")[0]
    assert stamp.endswith("Z") and len(stamp) == len("2026-12-01T15:09:08.084910565Z")


def test_the_reader_follows_a_growing_file_and_waits_for_unfinished_records(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("2026-12-01T00:00:00.000000001Z stdout F one\n2026-12-01T00:00:01.000000001Z stdout P tw")
    reader = LogReader(log)
    assert [line.text for line in reader.poll()] == ["one"]
    with log.open("a") as f:
        f.write("o-\n2026-12-01T00:00:02.000000001Z stdout F three\n")
    assert [line.text for line in reader.poll()] == ["two-three"]
    assert reader.poll() == []
    assert LogReader(tmp_path / "missing.log").poll() == []


def test_render_as_kubectl_logs_prints_it() -> None:
    lines = [LogLine(f"2026-12-01T00:00:0{i}.000000001Z", "stdout", f"line {i}") for i in range(4)]
    assert render(lines) == b"line 0\nline 1\nline 2\nline 3\n"
    assert render(lines, tail=2) == b"line 2\nline 3\n"
    assert render(lines, tail=0) == b""
    assert render(lines[:1], timestamps=True) == b"2026-12-01T00:00:00.000000001Z line 0\n"
