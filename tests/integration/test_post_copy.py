"""Post-copy live migration through the two node agents: real CRIU lazy pages, real runc
containers, real network namespaces, the agents as real processes over NATS.

The source freezes and dumps all but the memory; the destination restores at once and its
memory comes through CRIU's page server, carried between the agents in mutual TLS. Then the
failure paths: a destination that fails before the resume leaves the source serving on the
same connection; the source's agent killed during the fill stops the pod on the
destination (it never runs with missing memory) and fails the move with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from nats.aio.msg import Msg

from clm.contracts import MigrationStrategy, StepProgress, subjects
from clm.runtime.podnet import pod_netns_path
from tests.integration.agent_lab import NEEDS_NODES, STATE_MIB, Lab, check_client, lab, take_pod_port_on_b
from tests.kit.migration import Driver
from tests.kit.podlab import CountingClient, LabPod, lock_rules, running_on

__all__ = ["lab"]  # the fixture
pytestmark = NEEDS_NODES
POST_COPY = MigrationStrategy.POST_COPY


def processes() -> list[list[str]]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv:
            found.append(argv)
    return found


def lazy_pages_daemons(images: Path) -> list[str]:
    return [
        " ".join(argv)
        for argv in processes()
        if Path(argv[0]).name.startswith("criu") and "lazy-pages" in argv and str(images) in " ".join(argv)
    ]


def restoring(pod: LabPod, runc_root: Path) -> bool:
    return any(
        Path(a[0]).name == "runc" and "restore" in a and pod.container_id in a and f"--root={runc_root}" in a
        for a in processes()
    )


def helpers_of(pod: LabPod, images: Path) -> list[str]:
    """runc or CRIU processes still working for the pod: a lazy dump (page server) on the
    source, a lazy-pages daemon on the destination."""
    runc = [" ".join(a) for a in processes() if Path(a[0]).name == "runc" and pod.container_id in a]
    return runc + lazy_pages_daemons(images)


async def test_post_copy_moves_the_pod_with_its_connection_and_memory(lab: Lab) -> None:
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    try:
        await asyncio.to_thread(client.wait_answers)
        driver = await Driver.connect(lab.nats.url)
        heard: list[StepProgress] = []

        async def on_progress(msg: Msg) -> None:
            heard.append(StepProgress.model_validate_json(msg.data))

        try:
            listening = await driver.nc.subscribe(subjects.ALL_MIGRATION_PROGRESS, cb=on_progress)
            report = await driver.migrate(lab.move(POST_COPY))
            await listening.drain()
        finally:
            await driver.close()
        await asyncio.to_thread(client.wait_answers)  # and goes on, on its memory from A
        result = client.finish()
    finally:
        client.kill()
    assert report.ok, report.error
    check_client(lab, result)
    assert running_on(lab.pod, lab.b.runc_root) and not running_on(lab.pod, lab.a.runc_root)
    assert not pod_netns_path(lab.a.node, lab.pod.uid).exists()
    dump = report.result("checkpoint", "dump")
    assert dump is not None
    assert dump.details["lazy_pages"] is True, dump.details  # lazy_problem says what the dump held
    # Only the non-memory state crossed before the resume.
    assert int(dump.details["bytes"]) < STATE_MIB * 2**20 / 4, dump.details
    fill = report.result("checkpoint", "fill")
    assert fill is not None and int(fill.details["pages_bytes"]) > STATE_MIB * 2**20, fill.details
    assert float(fill.details["risk_window_seconds"]) > 0
    # The destination told the pages' arrival as it went, to the last byte.
    filling = [p.bytes_done for p in heard if p.step == "fill"]
    assert filling and filling == sorted(filling), filling
    assert filling[-1] == int(fill.details["pages_bytes"]), (filling, fill.details)
    assert helpers_of(lab.pod, lab.images) == []
    print(
        f"{result['answers']} answers, largest gap {result['largest_gap']:.3f}s, "
        f"dump {dump.duration_seconds:.3f}s ({dump.details['bytes']} bytes), "
        f"risk window {fill.details['risk_window_seconds']}s, {fill.details['pages_bytes']} page bytes"
    )


async def test_a_destination_failing_before_the_resume_leaves_the_source_serving(lab: Lab) -> None:
    move = lab.move(POST_COPY)
    driver = await Driver.connect(lab.nats.url)
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    blocker = None
    try:
        blocker = await take_pod_port_on_b(lab, driver, move)
        await asyncio.to_thread(client.wait_answers)
        report = await driver.migrate(move)
        await asyncio.to_thread(client.wait_answers)  # A serves again: its memory never left
        result = client.finish()
    finally:
        client.kill()
        if blocker is not None:
            blocker.kill()
        await driver.close()
    assert not report.ok and not report.committed
    restore = report.result("checkpoint", "restore")
    assert restore is not None and not restore.ok
    aborted = [r for r in report.results if r.step == "abort"]
    assert [r.ok for r in aborted] == [True, True, True], [(r.node, r.error) for r in aborted]
    check_client(lab, result)
    assert running_on(lab.pod, lab.a.runc_root)
    assert lock_rules(lab.a.node, lab.pod) == ""
    assert helpers_of(lab.pod, lab.images) == []
    lab.b_is_clean()


def kept_connections(lab: Lab) -> list[int]:
    """The keepers of A's lazy-dump connections, from its records: (pids)."""
    keepers = []
    for record in (lab.a.workdir / "state" / "migrations").glob("*/lazy.json"):
        with contextlib.suppress(OSError, ValueError):
            for entry in json.loads(record.read_text()).values():
                if entry.get("keeper"):
                    keepers.append(int(entry["keeper"][0]))
    return keepers


def alive(pid: int) -> bool:
    """Running (a zombie is ended: who reaps it is its parent's business)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def slow_uplink(lab: Lab, rate: str) -> Iterator[None]:
    """A's uplink at `rate`: the fill takes long enough to act in the middle of it."""
    netns = lab.segment.nodes["a"].name
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "256kb",
            "latency",
            "100ms",
        ],
        check=True,
    )
    try:
        yield
    finally:
        subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False
        )


async def test_the_source_agent_killed_during_the_fill_stops_the_pod_and_fails_the_move(lab: Lab) -> None:
    driver = await Driver.connect(lab.nats.url)
    filling = asyncio.Event()

    async def on_progress(msg: Msg) -> None:
        if StepProgress.model_validate_json(msg.data).step == "fill":
            filling.set()  # the fill step follows the commit

    async def kill_during_the_fill() -> None:
        await filling.wait()
        assert lab.a.checkpoint is not None
        lab.a.checkpoint.kill()
        lab.a.checkpoint.start().wait_ready()

    killer = asyncio.create_task(kill_during_the_fill())
    listening = await driver.nc.subscribe(subjects.ALL_MIGRATION_PROGRESS, cb=on_progress)
    try:
        # 256 MiB at 200 Mbit/s: the fill takes ~10 s, so the kill lands inside it.
        with slow_uplink(lab, "200mbit"):
            report = await driver.migrate(lab.move(POST_COPY))
    finally:
        await listening.unsubscribe()
        await driver.close()
    await asyncio.wait_for(killer, 30)
    assert report.committed and not report.ok
    assert "memory stopped arriving" in (report.error or ""), report.error
    assert "never ran with missing memory" in (report.error or "")
    assert not running_on(lab.pod, lab.b.runc_root)  # stopped, not running on zero pages
    assert not running_on(lab.pod, lab.a.runc_root)  # finalized: its address had moved
    assert helpers_of(lab.pod, lab.images) == []
    assert kept_connections(lab) == []
    leftovers = [p for p in (lab.images / lab.b.node / "in").glob("*") if p.exists()]
    assert leftovers == []


async def test_the_source_agent_killed_before_the_commit_rolls_back_from_its_kept_connection(
    lab: Lab,
) -> None:
    """The dump's page-server connection outlives the agent (its keeper): the restarted agent
    takes it over, fetches the memory back and restores the pod on A, same connection."""
    move = lab.move(POST_COPY)
    driver = await Driver.connect(lab.nats.url)
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    blocker = None
    kept: list[int] = []

    async def kill_once_the_pages_flow() -> None:
        while not (found := kept_connections(lab)):  # the relay reached the dump
            await asyncio.sleep(0.002)
        kept.extend(found)
        assert lab.a.checkpoint is not None
        lab.a.checkpoint.kill()
        lab.a.checkpoint.start().wait_ready()

    try:
        blocker = await take_pod_port_on_b(lab, driver, move)  # B's restore fails: no commit
        await asyncio.to_thread(client.wait_answers)
        killer = asyncio.create_task(kill_once_the_pages_flow())
        report = await driver.migrate(move)
        await asyncio.wait_for(killer, 30)
        await asyncio.to_thread(client.wait_answers)  # A serves again, on its own memory
        result = client.finish()
    finally:
        client.kill()
        if blocker is not None:
            blocker.kill()
        await driver.close()
    assert not report.committed and not report.ok
    aborted = [r for r in report.results if r.step == "abort"]
    assert aborted and all(r.ok for r in aborted), [(r.node, r.error) for r in aborted]
    check_client(lab, result)
    assert running_on(lab.pod, lab.a.runc_root)
    assert lock_rules(lab.a.node, lab.pod) == ""
    assert helpers_of(lab.pod, lab.images) == []
    assert kept and not any(alive(pid) for pid in kept)
    lab.b_is_clean()
