"""`clm watch [-n NAMESPACE]`: every Migration in a live table (a watch on the API, no
polling) until Ctrl-C; `--once` prints the table and returns, `--until-done` returns once
every migration it has seen has ended. Off a terminal it prints a line
per change instead, so its output can be logged."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.live import Live

from clm.contracts.protocol import is_terminal
from tools.console.migration_table import row, table
from tools.console.migrations import migration_list

GONE = 410


def watch_migrations(
    api: client.ApiClient,
    namespace: str | None,
    *,
    once: bool = False,
    until_done: bool = False,
    timeout: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    custom = client.CustomObjectsApi(api)
    console = Console(file=out, width=None if out.isatty() else 200)
    try:
        listed = migration_list(custom, namespace)
    except ApiException as exc:
        print(f"clm watch: the API answered {exc.status} {exc.reason}", file=err)
        return 1
    known: dict[str, dict[str, Any]] = {m["metadata"]["uid"]: m for m in listed["items"]}
    if once:
        console.print(table(list(known.values())))
        return 0
    deadline = None if timeout is None else time.monotonic() + timeout
    version = listed["metadata"].get("resourceVersion")
    live = Live(table(list(known.values())), console=console, refresh_per_second=4) if out.isatty() else None
    if live is None:
        for m in known.values():
            print(_line("LISTED", m), file=out, flush=True)
    try:
        if live is not None:
            live.start()
        if until_done and _all_ended(known):
            return 0
        while deadline is None or time.monotonic() < deadline:
            left = 300 if deadline is None else max(1, int(deadline - time.monotonic()))
            try:
                for event in watch.Watch().stream(
                    lambda **kw: migration_list(custom, namespace, **kw),
                    resource_version=version,
                    timeout_seconds=left,
                ):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] == "DELETED":
                        known.pop(obj["metadata"]["uid"], None)
                    else:
                        known[obj["metadata"]["uid"]] = obj
                    if live is not None:
                        live.update(table(list(known.values())))
                    else:
                        print(_line(event["type"], obj), file=out, flush=True)
                    if until_done and _all_ended(known):
                        return 0
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status != GONE:
                    print(f"clm watch: the API answered {exc.status} {exc.reason}", file=err)
                    return 1
                # The watch's version expired: start again from a fresh list.
                listed = migration_list(custom, namespace)
                known = {m["metadata"]["uid"]: m for m in listed["items"]}
                version = listed["metadata"].get("resourceVersion")
    except KeyboardInterrupt:
        return 130 if until_done else 0
    finally:
        if live is not None:
            live.stop()
    if until_done:
        print(f"clm watch: migrations still running after {timeout or 0:.0f}s", file=err)
        return 1
    return 0


def _all_ended(known: dict[str, dict[str, Any]]) -> bool:
    return bool(known) and all(is_terminal((m.get("status") or {}).get("phase")) for m in known.values())


def _line(kind: str, migration: dict[str, Any]) -> str:
    cells = row(migration, datetime.now(UTC))
    return f"{kind:<8} " + " ".join(c or "-" for c in cells[:-1])
