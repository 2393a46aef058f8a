from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tools.sandbox import log_server
from tools.sandbox.log_server import LogServer


def _record(i: int) -> str:
    return f"2026-12-01T00:00:{i:02d}.000000001Z stdout F line {i}\n"


@pytest.fixture
def served(tmp_path: Path):
    log = tmp_path / "default_web_main.log"
    log.write_text("".join(_record(i) for i in range(5)))
    alive = threading.Event()
    alive.set()

    def resolve(namespace: str, pod: str, container: str) -> tuple[Path, str] | None:
        return (
            (log, "default_web_main") if (namespace, pod, container) == ("default", "web", "main") else None
        )

    server = LogServer("sbx-1", resolve, lambda _cid: alive.is_set()).start()
    yield server, log, alive
    server.stop()


def _get(server: LogServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_logs_tail_and_timestamps(served) -> None:
    server, _log, _alive = served
    assert _get(server, "/containerLogs/default/web/main") == (200, "".join(f"line {i}\n" for i in range(5)))
    assert _get(server, "/containerLogs/default/web/main?tailLines=2") == (200, "line 3\nline 4\n")
    assert _get(server, "/containerLogs/default/web/main?tailLines=1&timestamps=True") == (
        200,
        "2026-12-01T00:00:04.000000001Z line 4\n",
    )


def test_clear_errors(served) -> None:
    server, _log, _alive = served
    assert _get(server, "/containerLogs/default/db/main") == (
        404,
        "container main of pod default/db is not on sbx-1\n",
    )
    assert _get(server, "/containerLogs/default/web/main?tailLines=x")[0] == 400
    assert _get(server, "/logs")[0] == 404


def test_follow_streams_new_lines_until_the_container_is_gone(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, log, alive = served
    monkeypatch.setattr(log_server, "FOLLOW_POLL_SECONDS", 0.02)

    def later() -> None:
        time.sleep(0.2)
        with log.open("a") as f:
            f.write(_record(5))
        time.sleep(0.2)
        alive.clear()

    threading.Thread(target=later, daemon=True).start()
    status, body = _get(server, "/containerLogs/default/web/main?follow=true&tailLines=1")
    assert (status, body) == (200, "line 4\nline 5\n")
