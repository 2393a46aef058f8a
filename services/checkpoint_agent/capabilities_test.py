from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from clm.contracts import NodeCapabilities
from clm.runtime import ServiceApp
from services.checkpoint_agent import capabilities
from services.checkpoint_agent.capabilities import STALE_INTERVALS, CapabilityPublisher
from services.checkpoint_agent.probe import ProbeResult


class Published:
    def __init__(self) -> None:
        self.reports: list[NodeCapabilities] = []
        self.arrived = asyncio.Condition()

    async def publish(self, message: NodeCapabilities) -> None:
        async with self.arrived:
            self.reports.append(message)
            self.arrived.notify_all()

    async def until(self, count: int) -> list[NodeCapabilities]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.reports) >= count), 10)
        return self.reports


async def test_reports_keep_their_pace_while_a_probe_hangs_and_then_say_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The report is the agent's heartbeat: a slow probe must not make the labeler think the
    # agent went quiet, and one that never answers must not keep a node labeled either.
    release = asyncio.Event()
    probes = 0

    async def probe(_criu: str) -> ProbeResult:
        nonlocal probes
        probes += 1
        if probes > 1:
            await release.wait()  # every probe after the first hangs until released
        return ProbeResult(arch="amd64", criu_version="4.2.1", probe_ok=True, problems=[])

    monkeypatch.setattr(capabilities, "run_probe", probe)
    monkeypatch.setattr(capabilities, "ensure_pipe_size", lambda: None)
    app = Published()
    # Only its publish is used.
    publisher = CapabilityPublisher(
        cast(ServiceApp, app), node="n1", criu="criu", transfer_address="127.0.0.1:1"
    )
    await publisher.publish()
    interval = 0.01
    repeating = asyncio.create_task(publisher.repeat(interval))
    try:
        reports = await app.until(STALE_INTERVALS + 4)
        assert probes == 2  # one probe at a time: the hanging one is not started again
        assert reports[1].probe_ok  # the last findings, while the probe runs
        assert not reports[-1].probe_ok and "has not answered" in reports[-1].problems[-1]
        release.set()
        await asyncio.wait_for(_until_ok_again(app, len(reports)), 10)
    finally:
        repeating.cancel()


async def _until_ok_again(app: Published, after: int) -> Any:
    while True:
        reports = await app.until(after + 1)
        if reports[-1].probe_ok:
            return reports[-1]
        after = len(reports)
