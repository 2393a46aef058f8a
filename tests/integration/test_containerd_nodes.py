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
from pathlib import Path

from clm.contracts import protocol
from clm.runtime.cri.client import state_name
from tests.integration.containerd_lab import (
    NEEDS_CONTAINERD,
    STATE_MIB,
    ContainerdLab,
    CriWatch,
    containerd_lab,
)
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.containerd_node import BIN
from tests.kit.kubelet import empty_dir
from tests.kit.migration import Driver
from tests.kit.podlab import CountingClient, expected_hash
from tests.kit.segment import POD_IP

__all__ = ["containerd_lab"]  # the fixture

pytestmark = NEEDS_CONTAINERD


def _check_client(result: dict) -> None:
    assert result["error"] is None, f"the client's connection broke: {result['error']}"
    assert result["in_order"], "a request was lost or answered twice"
    assert result["answers"] > 50
    assert result["hash"] == expected_hash(STATE_MIB, result["answers"]), "the state did not continue"


async def test_pod_moves_between_containerd_nodes_with_its_connection(containerd_lab: ContainerdLab) -> None:
    lab = containerd_lab
    source = lab.pod_object("mc-0", node=lab.a.node)
    running = await asyncio.to_thread(lab.kubelets["a"].run_pod, source)
    lab.set_pod_ip("mc-0", POD_IP)
    await asyncio.to_thread(lab.wait_running, "a", running)
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
        move = lab.move(source)
        clone = lab.clone_object(lab.core_pod("mc-0"), "mc-0-clone-1")
        # kubelet on B starts the clone as soon as it is bound there: its container's
        # creation waits in the restore handler until the restore step offers the images.
        clone_start = asyncio.create_task(asyncio.to_thread(lab.kubelets["b"].run_pod, clone))
        report = await driver.migrate(move)
        assert report.ok, report.error
        clone_running = await asyncio.wait_for(clone_start, 30)
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
    print(
        f"{result['answers']} answers, largest gap {result['largest_gap']:.3f}s, "
        f"migration {report.total_seconds:.2f}s, restore {restore.details}"
    )


async def test_rollback_thaws_the_source_in_place(containerd_lab: ContainerdLab) -> None:
    lab = containerd_lab
    source = lab.pod_object("mc-0", node=lab.a.node)
    running = await asyncio.to_thread(lab.kubelets["a"].run_pod, source)
    lab.set_pod_ip("mc-0", POD_IP)
    await asyncio.to_thread(lab.wait_running, "a", running)
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
