"""Live migration through the two node agents over NATS: real CRIU, real runc containers,
real network namespaces on a shared segment, the agents as real processes.

A stateful server (256 MiB of state) runs in a runc container on node A; a client on
another host of the segment holds one connection and sends requests back to back. The
migration steps go to the agents as NATS commands (network prepare, check-cpu, dump,
restore, commit, fill, finalize, release). Then the failure paths: the destination agent
killed mid-transfer, and a restore that fails — each leaves the pod serving on node A on the
same connection with no CRIU network-lock rules left, and node B clean; and a local fill
that fails after the commit, which stops the pod on B and fails the move.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from clm.contracts import protocol
from clm.runtime.podnet import pod_netns_path
from tests.integration.agent_lab import (
    NEEDS_NODES,
    STATE_MIB,
    Lab,
    check_client,
    lab,
    running_lab,
    take_pod_port_on_b,
)
from tests.kit.migration import Driver
from tests.kit.nats_server import NatsServer
from tests.kit.podlab import CountingClient, LabPod, lock_rules, running_on
from tests.kit.segment import Segment

__all__ = ["lab"]  # the fixture

pytestmark = NEEDS_NODES


async def test_pod_moves_to_node_b_with_its_connection(lab: Lab) -> None:
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    try:
        await asyncio.to_thread(client.wait_answers)  # the client is busy when the freeze comes
        driver = await Driver.connect(lab.nats.url)
        try:
            report = await driver.migrate(lab.move())
        finally:
            await driver.close()
        await asyncio.to_thread(client.wait_answers)  # and goes on after the move
        result = client.finish()
    finally:
        client.kill()
    assert report.ok, report.error
    check_client(lab, result)
    assert running_on(lab.pod, lab.b.runc_root) and not running_on(lab.pod, lab.a.runc_root)
    assert not pod_netns_path(lab.a.node, lab.pod.uid).exists()  # released
    dump = report.result("checkpoint", "dump")
    assert dump is not None and int(dump.details["bytes"]) > STATE_MIB * 2**20
    for phase in ("frozen_seconds", "memdump_seconds", "memwrite_seconds", "transfer_seconds"):
        assert float(dump.details[phase]) > 0, phase
    for r in report.results:
        print(f"  {r.agent:10} {r.step:9} {r.node:8} {r.duration_seconds:.3f}s {r.occurred_at.time()}")
    print("  client gaps > 50 ms:", result["gaps"])
    print(
        f"{result['answers']} answers, largest gap {result['largest_gap']:.3f}s, "
        f"migration {report.total_seconds:.2f}s, dump details {dump.details}"
    )


async def test_repeated_commands_do_not_redo_work(lab: Lab) -> None:
    driver = await Driver.connect(lab.nats.url)
    try:
        move = lab.move()
        first = await driver.migrate(move)
        assert first.ok, first.error
        # The same dump and restore again (as a redelivery would): answered, not redone.
        again = await driver.send(driver.command(move, protocol.DUMP), 30)
        assert again.ok and again.details.get("repeated") is True
        restore = await driver.send(driver.command(move, protocol.RESTORE), 30)
        assert restore.ok and restore.details.get("repeated") is True
        assert running_on(lab.pod, lab.b.runc_root)
        # Abort after the commit point is refused: the source's copy is gone for good.
        late = await driver.send(driver.command(move, protocol.ABORT_SOURCE), 30)
        assert not late.ok and "finalized" in (late.error or "")
    finally:
        await driver.close()


async def test_destination_agent_killed_mid_transfer_leaves_pod_on_a(lab: Lab) -> None:
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    try:
        await asyncio.to_thread(client.wait_answers)
        driver = await Driver.connect(lab.nats.url)
        incoming = lab.images / lab.b.node / "in"

        async def kill_when_receiving() -> None:
            while not any(incoming.glob("*.partial-*")):
                await asyncio.sleep(0.005)
            assert lab.b.checkpoint is not None
            lab.b.checkpoint.kill()
            # It comes back (as a DaemonSet pod would) and must not resurrect the half transfer.
            lab.b.checkpoint.start().wait_ready()

        killer = asyncio.create_task(kill_when_receiving())
        try:
            report = await driver.migrate(lab.move())
        finally:
            await driver.close()
        await asyncio.wait_for(killer, 5)
        await asyncio.to_thread(client.wait_answers)  # the pod serves on A again
        result = client.finish()
    finally:
        client.kill()
    assert not report.ok and not report.committed
    dump = report.result("checkpoint", "dump")
    assert dump is not None and not dump.ok
    assert "rolled back" in (dump.error or ""), dump.error
    check_client(lab, result)
    assert running_on(lab.pod, lab.a.runc_root)
    assert lock_rules(lab.a.node, lab.pod) == ""
    lab.b_is_clean()


async def test_source_agent_killed_mid_dump_finishes_the_move(lab: Lab) -> None:
    """SIGKILL of the source's agent while CRIU dumps: runc and CRIU finish on their own, the
    command goes to the restarted agent, which sees the dump complete and moves on."""
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    try:
        await asyncio.to_thread(client.wait_answers)
        driver = await Driver.connect(lab.nats.url)

        async def kill_while_dumping() -> None:
            while not _checkpointing(lab.pod):
                await asyncio.sleep(0.002)
            assert lab.a.checkpoint is not None
            lab.a.checkpoint.kill()
            lab.a.checkpoint.start().wait_ready()

        killer = asyncio.create_task(kill_while_dumping())
        try:
            report = await driver.migrate(lab.move())
        finally:
            await driver.close()
        await asyncio.wait_for(killer, 30)
        await asyncio.to_thread(client.wait_answers)
        result = client.finish()
    finally:
        client.kill()
    assert report.ok, report.error
    dump = report.result("checkpoint", "dump")
    assert dump is not None and dump.details.get("resumed_after_agent_restart") is True, dump.details
    check_client(lab, result)
    assert running_on(lab.pod, lab.b.runc_root) and not running_on(lab.pod, lab.a.runc_root)
    assert lock_rules(lab.a.node, lab.pod) == ""


def _checkpointing(pod: LabPod) -> bool:
    """A `runc checkpoint` of the pod's container runs (CRIU is dumping it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"runc") and b"checkpoint" in argv and pod.container_id.encode() in argv:
            return True
    return False


async def test_failed_restore_leaves_pod_on_a(lab: Lab) -> None:
    move = lab.move()
    driver = await Driver.connect(lab.nats.url)
    client = CountingClient(lab.segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
    blocker = None
    try:
        blocker = await take_pod_port_on_b(lab, driver, move)
        report = await driver.migrate(move)
        await asyncio.to_thread(client.wait_answers)  # the pod serves on A again
        result = client.finish()
    finally:
        client.kill()
        if blocker is not None:
            blocker.kill()
        await driver.close()
    assert not report.ok and not report.committed
    restore = report.result("checkpoint", "restore")
    assert restore is not None and not restore.ok and "nothing left running" in (restore.error or "")
    aborted = [r for r in report.results if r.step == "abort"]
    assert [r.ok for r in aborted] == [True, True, True], [(r.node, r.error) for r in aborted]
    check_client(lab, result)
    assert running_on(lab.pod, lab.a.runc_root)
    assert lock_rules(lab.a.node, lab.pod) == ""
    lab.b_is_clean()


def criu_whose_fill_fails(tmp: Path, state_dir: Path) -> Path:
    """A CRIU for node B: every command is the real one, but a `lazy-pages` daemon, once it
    has put every page in place, reports failure as soon as the agent counts the pod as
    filling. That is after the restore has returned (the pod runs), so the failure falls in
    the local fill after the commit, every time."""
    real = shutil.which("criu")
    assert real is not None
    wrapper = tmp / "criu-fill-fails"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "lazy-pages" ]; then\n'
        f'  {real} "$@"\n'
        f"  until ls {state_dir}/migrations/*/filling >/dev/null 2>&1; do sleep 0.01; done\n"
        "  exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


async def test_a_local_fill_that_fails_after_the_commit_stops_the_pod_and_fails_the_move(
    segment: Segment, nats_server: NatsServer, tmp_path: Path
) -> None:
    # Stop-and-copy: B resumes the pod before its memory is all in place and commits the
    # network; its own lazy-pages daemon fills the rest from the images that arrived.
    wrapper = criu_whose_fill_fails(tmp_path, tmp_path / "b" / "state")
    with running_lab(segment, nats_server, tmp_path, b_env={"CLM_CRIU_BINARY": str(wrapper)}) as lab:
        driver = await Driver.connect(lab.nats.url)
        try:
            report = await driver.migrate(lab.move())
        finally:
            await driver.close()
        assert report.committed and not report.ok
        assert "could not be filled from its images" in (report.error or ""), report.error
        assert "never ran with missing memory" in (report.error or "")
        assert not running_on(lab.pod, lab.b.runc_root)  # stopped: never runs on missing memory
        assert not running_on(lab.pod, lab.a.runc_root)  # finalized: its address had moved
        assert lock_rules(lab.b.node, lab.pod) == ""
        leftovers = [p for p in (lab.images / lab.b.node / "in").glob("*") if p.exists()]
        assert leftovers == []
        assert not list((tmp_path / "b" / "state" / "migrations").glob("*/filling"))
