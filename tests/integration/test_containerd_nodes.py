"""Live migration between two containerd 2.1 nodes, driven as kubelet drives them (CRI).

A 256 MiB stateful server pod is started over CRI on node A; a client on the segment holds
one connection. The clone pod (RuntimeClass clm-restore, annotated cast.ai/restore) is
started over CRI on node B before the dump, as kubelet would once the coordinator creates
it; its container's creation waits in the restore handler for the images. The steps go to
both agents over NATS. The client never reconnects, CRI on B reports the clone's container
Running with the state carried on, CRI on A never reports the source exited before its pod
is removed; a rollback leaves CRI on A reporting the source running, its connection kept.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clm.contracts import MigrationStrategy, protocol
from clm.runtime.cri.client import state_name
from tests.integration.support import pex_dir
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.containerd_node import BIN, RESTORE_HANDLER
from tests.kit.kubelet import empty_dir
from tests.kit.migration import Driver
from tests.kit.nats_server import NatsServer
from tests.kit.podlab import CountingClient, expected_hash
from tests.kit.segment import POD_IP, Segment
from tools.containerd.lab import ContainerdLab, CriWatch, containerd_lab, missing

STATE_MIB = 256
NEEDS_CONTAINERD = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture(name="lab")
def lab_fixture(segment: Segment, nats_server: NatsServer, tmp_path: Path) -> Iterator[ContainerdLab]:
    with containerd_lab(segment, nats_server, tmp_path, pex_dir=pex_dir(), state_mib=STATE_MIB) as lab:
        yield lab


pytestmark = NEEDS_CONTAINERD


def _check_client(result: dict) -> None:
    assert result["error"] is None, f"the client's connection broke: {result['error']}"
    assert result["in_order"], "a request was lost or answered twice"
    assert result["answers"] > 50
    assert result["hash"] == expected_hash(STATE_MIB, result["answers"]), "the state did not continue"


async def test_pod_moves_between_containerd_nodes_with_its_connection(lab: ContainerdLab) -> None:
    # install-node's drop-in is loaded: containerd offers the clones' runtime handler.
    assert RESTORE_HANDLER in lab.cris["b"].runtime_handlers()
    source, running = await asyncio.to_thread(lab.start_server, "mc-0")
    # What the pod wrote to its emptyDir and to its own root filesystem (the image's upper layer).
    data = {"db/blob.bin": os.urandom(3 * 2**20), "db/log.txt": b"line\n" * 1000}
    for relative, content in data.items():
        path = empty_dir(lab.kubelets["a"].kubelet_dir, source, "data") / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    marker = os.urandom(4096)
    Path(f"/proc/{lab.pid_of('a', running)}/root/var/tmp/marker").write_bytes(marker)
    watch = CriWatch(lab.cris["a"], running.containers["server"]).start()
    client = CountingClient(lab.segment.nodes["client"].name, POD_IP, lab.tmp / "client")
    driver = await Driver.connect(lab.nats.url)
    try:
        await asyncio.to_thread(client.wait_answers)
        report, clone, clone_running = await lab.migrate(driver, source, "mc-0-clone-1")
        assert report.ok, report.error
        assert clone_running is not None
        await asyncio.to_thread(client.wait_answers)
        result = client.finish()
        states_before_removal = list(watch.states)
        await asyncio.to_thread(lab.kubelets["a"].remove_pod, running)
    finally:
        client.kill()
        watch.stop()
        await driver.close()
    _check_client(result)
    status = lab.cris["b"].container_status(clone_running.containers["server"])
    assert state_name(status.state) == "running"
    assert status.log_path.endswith("server/0.log")
    assert states_before_removal == ["running"], f"CRI on A saw the source as {states_before_removal}"
    for relative, content in data.items():
        moved = empty_dir(lab.kubelets["b"].kubelet_dir, clone, "data") / relative
        assert moved.read_bytes() == content, f"emptyDir file {relative} differs after the move"
    assert Path(f"/proc/{lab.pid_of('b', clone_running)}/root/var/tmp/marker").read_bytes() == marker
    # The checkpoint archive B kept, as checkpointctl reads it.
    archives = await asyncio.to_thread(lab.wait_archives, "b", "checkpoint-mc-0_games-server-*.tar")
    assert len(archives) == 1, archives
    shown = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "checkpointctl"), "show", str(archives[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        "server" in shown.stdout and "containerd" in shown.stdout and POD_IMAGE in shown.stdout
    ), shown.stdout
    restore = report.result("checkpoint", "restore")
    assert restore is not None and restore.details.get("through") == "containerd"
    # kubelet's start of the clone pod came before the freeze: its create waited for the images.
    awaited = report.result("checkpoint", "await-clone")
    assert awaited is not None and awaited.details.get("parked") is True, awaited
    # kubelet's create answered once the clone ran; its memory came after the network commit.
    fill = report.result("checkpoint", "fill")
    assert restore.details.get("filled_after_commit") is True, restore.details
    assert fill is not None and fill.details.get("pages_from") == "local images", fill
    assert fill.details.get("containers") == 1, fill.details
    print(
        f"{result['answers']} answers, largest gap {result['largest_gap']:.3f}s, "
        f"migration {report.total_seconds:.2f}s, restore {restore.details}"
    )


async def test_rollback_thaws_the_source_in_place(lab: ContainerdLab) -> None:
    source, running = await asyncio.to_thread(lab.start_server, "mc-0")
    watch = CriWatch(lab.cris["a"], running.containers["server"]).start()
    client = CountingClient(lab.segment.nodes["client"].name, POD_IP, lab.tmp / "client")
    driver = await Driver.connect(lab.nats.url)
    try:
        await asyncio.to_thread(client.wait_answers)
        move = lab.move(source)
        for step in (protocol.PREPARE_NETWORK, protocol.CHECK_CPU, protocol.DUMP):
            result = await driver.send(driver.command(move, step), 60)
            assert result.ok, result.error
        # No clone pod on B: the restore cannot happen, and the move is rolled back.
        started = time.perf_counter()
        for step in protocol.ROLLBACK:
            result = await driver.send(driver.command(move, step), 60)
            assert result.ok, result.error
        rollback_seconds = time.perf_counter() - started
        await asyncio.to_thread(client.wait_answers)
        outcome = client.finish()
    finally:
        client.kill()
        states = watch.stop()
        await driver.close()
    _check_client(outcome)
    assert states == ["running"], f"CRI on A saw the source as {states}"
    assert state_name(lab.cris["a"].container_status(running.containers["server"]).state) == "running"
    print(f"rollback (thaw) took {rollback_seconds:.3f}s; {outcome['answers']} answers")


def _helpers(container_id: str, images: Path) -> list[str]:
    """runc or CRIU still working for a container: a lazy dump's page server, a lazy-pages
    daemon."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = " ".join(a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0") if a)
        except OSError:
            continue
        if ("runc" in argv and "checkpoint" in argv and container_id in argv) or (
            "lazy-pages" in argv and str(images) in argv
        ):
            found.append(argv)
    return found


async def test_post_copy_moves_between_containerd_nodes_with_its_connection(lab: ContainerdLab) -> None:
    source, running = await asyncio.to_thread(lab.start_server, "mc-0")
    watch = CriWatch(lab.cris["a"], running.containers["server"]).start()
    client = CountingClient(lab.segment.nodes["client"].name, POD_IP, lab.tmp / "client")
    driver = await Driver.connect(lab.nats.url)
    try:
        await asyncio.to_thread(client.wait_answers)
        report, _, clone_running = await lab.migrate(
            driver, source, "mc-0-clone-1", MigrationStrategy.POST_COPY
        )
        assert report.ok, report.error
        assert clone_running is not None
        await asyncio.to_thread(client.wait_answers)
        result = client.finish()
        states_before_removal = list(watch.states)
        await asyncio.to_thread(lab.kubelets["a"].remove_pod, running)
    finally:
        client.kill()
        watch.stop()
        await driver.close()
    _check_client(result)
    assert state_name(lab.cris["b"].container_status(clone_running.containers["server"]).state) == "running"
    assert states_before_removal == ["running"], f"CRI on A saw the source as {states_before_removal}"
    dump = report.result("checkpoint", "dump")
    assert dump is not None and dump.details.get("lazy_pages") is True, dump
    restore = report.result("checkpoint", "restore")
    assert restore is not None and restore.details.get("through") == "containerd", restore
    assert restore.details.get("lazy_pages") is True and restore.details.get("filled_after_commit") is True
    fill = report.result("checkpoint", "fill")
    assert fill is not None and fill.details.get("pages_from") == "source", fill
    assert int(fill.details.get("pages_bytes", 0)) >= STATE_MIB << 20, fill.details
    for container_id in (running.containers["server"], clone_running.containers["server"]):
        assert _helpers(container_id, lab.images) == []
    print(f"post-copy: largest gap {result['largest_gap']:.3f}s, fill {fill.details}")


async def test_post_copy_rollback_after_the_source_agent_restarted_thaws_the_source(
    lab: ContainerdLab,
) -> None:
    """The lazy dump left the tasks frozen: a rollback ends its page-server session without
    fetching a page, and thaws the pod in place, even from an agent that restarted since."""
    source, running = await asyncio.to_thread(lab.start_server, "mc-0")
    watch = CriWatch(lab.cris["a"], running.containers["server"]).start()
    client = CountingClient(lab.segment.nodes["client"].name, POD_IP, lab.tmp / "client")
    driver = await Driver.connect(lab.nats.url)
    try:
        await asyncio.to_thread(client.wait_answers)
        move = lab.move(source, MigrationStrategy.POST_COPY)
        for step in (protocol.PREPARE_NETWORK, protocol.CHECK_CPU, protocol.DUMP):
            result = await driver.send(driver.command(move, step), 60)
            assert result.ok, result.error
        assert result.details.get("lazy_pages") is True, result.details
        assert _helpers(running.containers["server"], lab.images) != []  # its page server serves
        assert lab.a.checkpoint is not None
        lab.a.checkpoint.kill()
        await asyncio.to_thread(lab.a.checkpoint.start().wait_ready)
        for step in protocol.ROLLBACK:
            result = await driver.send(driver.command(move, step), 60)
            assert result.ok, result.error
        await asyncio.to_thread(client.wait_answers)
        outcome = client.finish()
    finally:
        client.kill()
        states = watch.stop()
        await driver.close()
    _check_client(outcome)
    assert states == ["running"], f"CRI on A saw the source as {states}"
    assert state_name(lab.cris["a"].container_status(running.containers["server"]).state) == "running"
    assert _helpers(running.containers["server"], lab.images) == []
