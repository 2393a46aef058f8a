"""Shared helpers of the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from clm.contracts import protocol
from clm.runtime import ServiceApp, ServiceSettings


def test_settings(url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "nats_url": url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "max_deliver": 3,
        "redelivery_backoff_seconds": [0.1, 0.2],
        "ack_wait_seconds": 5.0,
        "shutdown_grace_seconds": 10.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def make_app(url: str, name: str = "test", **overrides: object) -> ServiceApp:
    return ServiceApp(
        name=name,
        version="test",
        settings=test_settings(url, **overrides),
        description=f"integration-test app {name}",
    )


async def fetch_from_stream(
    url: str, subject: str, stream: str, count: int, timeout: float = 15.0
) -> list[Msg]:
    """Read up to `count` messages on `subject` with an ephemeral pull consumer."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().pull_subscribe(
            subject, durable=None, stream=stream, config=ConsumerConfig(ack_wait=30)
        )
        got: list[Msg] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                got += await sub.fetch(count - len(got), timeout=1)
            except TimeoutError:
                continue
        return got
    finally:
        await nc.close()


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def pex_path(service: str) -> Path:
    """Under `pants test` the PEXes sit in the sandbox root; else look in dist/ or CLM_PEX_DIR."""
    name = f"clm-{service}.pex"
    for base in (os.environ.get("CLM_PEX_DIR"), ".", "dist"):
        if base and Path(base, name).is_file():
            return Path(base, name).resolve()
    pytest.fail(
        f"{name} not found: run these tests with `./pants test ::` (which builds the PEXes)"
        " or run `./pants package ::` first"
    )


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def pex_dir() -> Path | None:
    """Where the service PEXes are (under `pants test`: the sandbox root; or CLM_PEX_DIR);
    None runs the services from source (`python -m`), for quick runs outside Pants. Not
    dist/: a PEX there may be older than the source being tested."""
    for base in (os.environ.get("CLM_PEX_DIR"), "."):
        if base and Path(base, "clm-checkpoint-agent.pex").is_file():
            return Path(base).resolve()
    return None


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true (returned), or fail saying what."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def create_migration(custom: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """A Migration object, as a user or the planner creates it."""
    custom.create_namespaced_custom_object(
        protocol.GROUP,
        protocol.VERSION,
        namespace,
        protocol.PLURAL,
        {"apiVersion": protocol.API_VERSION, "kind": protocol.KIND, "metadata": {"name": name}, "spec": spec},
    )


def log_excerpts(log_dir: Path, lines: int = 25) -> str:
    """The last warnings and errors of every service log in `log_dir`, for a failure message."""
    marks = ("WARNING", "ERROR", "Traceback", "Error", "failed")
    parts = []
    for log in sorted(log_dir.glob("*.log")):
        hits = [
            line for line in log.read_text(errors="replace").splitlines() if any(m in line for m in marks)
        ]
        if hits:
            parts.append(f"--- {log.name} ---\n" + "\n".join(hits[-lines:]))
    return "\n".join(parts) or f"(no warnings in {log_dir})"


@contextlib.contextmanager
def one_sandbox_at_a_time() -> Iterator[None]:
    """Pants runs test files in parallel; the sandbox is one per machine (fixed names), so
    sandbox tests take turns instead of failing on each other's machine lock. The pre-copy VM
    takes its turn too: it keeps both cores busy."""
    with SANDBOX_TESTS_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


SANDBOX_TESTS_LOCK = Path("/tmp/clm-sandbox-tests.lock")
