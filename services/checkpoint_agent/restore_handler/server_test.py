"""clm-runc (compiled from clm-runc.c) against the agent's socket, with a stand-in runc that
records what it was asked: the wire protocol both ways, as containerd's shim would drive it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from services.checkpoint_agent.restore_handler.server import Restored, RestoreHandlerServer

SOURCE = Path(__file__).parent / "clm-runc.c"
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="needs gcc to build clm-runc: run tools/setup/install-system-deps"
)


@pytest.fixture(scope="module")
def clm_runc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("bin") / "clm-runc"
    subprocess.run(["gcc", "-O2", "-Wall", "-static", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def fake_runc(directory: Path) -> Path:
    """Records its argv (one JSON line per call) and exits 0."""
    script = directory / "runc"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {directory}/calls\nexit "${{FAKE_RUNC_EXIT:-0}}"\n')
    script.chmod(0o755)
    return script


def bundle(directory: Path, annotations: dict[str, str]) -> Path:
    (directory / "rootfs").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"annotations": annotations, "mounts": []}))
    return directory


CLONE = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.container-name": "server",
    "io.kubernetes.cri.sandbox-namespace": "games",
    "io.kubernetes.cri.sandbox-name": "mc-0-clone-1",
    "cast.ai/restore": "games/mc-0",
}


async def call(binary: Path, socket: Path, runc: Path, *argv: str) -> tuple[int, str]:
    env = {**os.environ, "CLM_RESTORE_SOCKET": str(socket), "CLM_RUNC": str(runc)}
    proc = await asyncio.create_subprocess_exec(
        str(binary), *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_the_sandbox_runs_as_asked_and_other_commands_never_ask(clm_runc: Path, tmp_path: Path) -> None:
    runc = fake_runc(tmp_path)
    server = await RestoreHandlerServer(tmp_path / "h.sock").start()
    try:
        sandbox = bundle(tmp_path / "sb", {"io.kubernetes.cri.container-type": "sandbox"})
        code, out = await call(
            clm_runc, server.socket_path, runc, "--root", "/r", "create", "--bundle", str(sandbox), "sb1"
        )
        assert code == 0, out
        await server.stop()  # state, kill, delete: straight to runc, agent or not
        code, out = await call(clm_runc, server.socket_path, runc, "--root", "/r", "kill", "sb1", "KILL")
        assert code == 0, out
    finally:
        await server.stop()
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"--root /r create --bundle {sandbox} sb1",
        "--root /r kill sb1 KILL",
    ]


async def test_a_clone_waits_for_its_images_is_restored_and_its_start_is_done(
    clm_runc: Path, tmp_path: Path
) -> None:
    runc = fake_runc(tmp_path)
    server = await RestoreHandlerServer(tmp_path / "h.sock").start()
    try:
        clone = bundle(tmp_path / "c1", CLONE)
        creating = asyncio.create_task(
            call(
                clm_runc,
                server.socket_path,
                runc,
                "--root",
                "/r",
                "create",
                "--bundle",
                str(clone),
                "--pid-file",
                "/p",
                "c1",
            )
        )
        await asyncio.sleep(0.3)
        assert not creating.done()  # kubelet got there first: the create waits for the images
        package = tmp_path / "package"
        (package / "criu").mkdir(parents=True)
        offer = server.offer(source="games/mc-0", container="server", package=package)
        code, out = await asyncio.wait_for(creating, 10)
        assert code == 0, out
        restored = await asyncio.wait_for(offer.result, 5)
        assert (restored.container_id, restored.code) == ("c1", 0)
        code, out = await call(clm_runc, server.socket_path, runc, "--root", "/r", "start", "c1")
        assert code == 0, out
    finally:
        await server.stop()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1  # the start ran nothing
    assert calls[0].startswith(f"--root /r restore --detach --bundle {clone} --pid-file /p --image-path=")
    assert calls[0].endswith("--tcp-established c1")


async def test_a_clone_without_a_checkpoint_never_starts_fresh(clm_runc: Path, tmp_path: Path) -> None:
    runc = fake_runc(tmp_path)
    server = await RestoreHandlerServer(tmp_path / "h.sock", create_wait_seconds=0.5).start()
    try:
        clone = bundle(tmp_path / "c2", CLONE)
        code, out = await call(clm_runc, server.socket_path, runc, "create", "--bundle", str(clone), "c2")
        assert code == 1 and "never started fresh" in out, out
        not_a_clone = bundle(tmp_path / "c3", {k: v for k, v in CLONE.items() if k != "cast.ai/restore"})
        code, out = await call(
            clm_runc, server.socket_path, runc, "create", "--bundle", str(not_a_clone), "c3"
        )
        assert code == 1 and "only restores clone pods" in out, out
    finally:
        await server.stop()
    code, out = await call(clm_runc, tmp_path / "h.sock", runc, "create", "--bundle", str(clone), "c2")
    assert code == 1 and "cannot reach the CLM checkpoint agent" in out, out
    assert not (tmp_path / "calls").exists()  # runc never ran


async def test_a_given_up_clones_containers_are_refused_at_once_others_still_wait(
    clm_runc: Path, tmp_path: Path
) -> None:
    # A fill that failed stopped the clone's container; kubelet starts it again in the same
    # sandbox. Parked for create_wait_seconds, that held the clone pod's teardown as long.
    runc = fake_runc(tmp_path)
    server = await RestoreHandlerServer(tmp_path / "h.sock", create_wait_seconds=30).start()
    dead = {**CLONE, "io.kubernetes.cri.sandbox-id": "sandbox-of-the-clone"}
    try:

        def create(name: str, annotations: dict[str, str]) -> Coroutine[Any, Any, tuple[int, str]]:
            clone = bundle(tmp_path / name, annotations)
            return call(clm_runc, server.socket_path, runc, "create", "--bundle", str(clone), name)

        waiting = asyncio.create_task(create("c1", dead))
        assert await server.wait_parked("games/mc-0", 10)
        server.withdraw("games/mc-0")
        code, out = await asyncio.wait_for(waiting, 5)  # woken, not after 30 s
        assert code == 1 and "was given up on this node" in out, out
        code, out = await asyncio.wait_for(create("c2", dead), 5)
        assert code == 1 and "was given up on this node" in out, out
        # The next move's clone (another sandbox) still waits for its images, and gets them.
        package = tmp_path / "package"
        (package / "criu").mkdir(parents=True)
        fresh = {**CLONE, "io.kubernetes.cri.sandbox-id": "sandbox-of-the-next-clone"}
        creating = asyncio.create_task(create("c3", fresh))
        assert await server.wait_parked("games/mc-0", 10)
        offer = server.offer(source="games/mc-0", container="server", package=package)
        code, out = await asyncio.wait_for(creating, 10)
        assert code == 0, out
        assert (await asyncio.wait_for(offer.result, 5)).code == 0
    finally:
        await server.stop()
    assert "c1" not in (tmp_path / "calls").read_text()  # runc never ran for the given up clone


async def restore_lazily(
    clm_runc: Path,
    tmp_path: Path,
    daemon: list[str] | None,
    *,
    withdraw: bool = False,
    page_server: tuple[str, int] | None = None,
    asked: list[tuple[str, int] | None] | None = None,
) -> tuple[int, str, Restored | None, list[str]]:
    """A clone restored with a stand-in lazy-pages daemon (`daemon`; None: none can start),
    its pages from the offer's `page_server` (what the daemon was given goes in `asked`);
    the handler's kills."""
    runc, killed = fake_runc(tmp_path), list[str]()
    started: list[subprocess.Popen[bytes]] = []

    def lazy_pages(images: Path, pages_from: tuple[str, int] | None) -> subprocess.Popen[bytes] | None:
        if asked is not None:
            asked.append(pages_from)
        if daemon is None:
            return None
        started.append(subprocess.Popen(daemon))
        return started[-1]

    server = await RestoreHandlerServer(
        tmp_path / "h.sock", lazy_pages=lazy_pages, kill=killed.append
    ).start()
    try:
        package = tmp_path / "package"
        (package / "criu").mkdir(parents=True)
        offer = server.offer(
            source="games/mc-0", container="server", package=package, page_server=page_server
        )
        if withdraw:
            # The move is rolled back while runc restores: the stand-in runc holds on until then.
            (tmp_path / "runc").write_text(
                f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/calls\ntouch {tmp_path}/restoring\n'
                f"while [ ! -e {tmp_path}/withdrawn ]; do sleep 0.01; done\n"
            )
        clone = bundle(tmp_path / "c1", CLONE)
        creating = asyncio.create_task(
            call(clm_runc, server.socket_path, runc, "create", "--bundle", str(clone), "c1")
        )
        if withdraw:
            while not (tmp_path / "restoring").exists():
                await asyncio.sleep(0.01)
            server.withdraw("games/mc-0")
            (tmp_path / "withdrawn").touch()
        code, out = await asyncio.wait_for(creating, 10)
        # A withdrawn offer is cancelled: no one waits for its result.
        result = None if withdraw else await asyncio.wait_for(offer.result, 5)
    finally:
        await server.stop()
    if result is not None and result.page_fill is not None:
        assert result.page_fill.daemon is started[0] and started[0].poll() is None
        started[0].kill()
    for proc in started:
        assert proc.wait(5) is not None
    return code, out, result, killed


async def test_a_lazy_restore_answers_the_create_while_its_memory_is_still_filling(
    clm_runc: Path, tmp_path: Path
) -> None:
    code, out, result, killed = await restore_lazily(clm_runc, tmp_path, ["sleep", "30"])
    assert code == 0, out  # kubelet's create returned with the daemon still at work
    assert result is not None and result.code == 0 and result.page_fill is not None and killed == []
    assert result.page_fill.container_id == "c1"
    assert "--lazy-pages" in (tmp_path / "calls").read_text()


async def test_a_post_copy_restore_gets_its_pages_from_the_offers_page_server(
    clm_runc: Path, tmp_path: Path
) -> None:
    asked: list[tuple[str, int] | None] = []
    code, out, result, _ = await restore_lazily(
        clm_runc, tmp_path, ["sleep", "30"], page_server=("127.0.0.1", 4711), asked=asked
    )
    assert code == 0, out
    assert asked == [("127.0.0.1", 4711)]
    assert result is not None and result.page_fill is not None


async def test_a_post_copy_restore_without_a_lazy_pages_daemon_is_refused_not_made_eager(
    clm_runc: Path, tmp_path: Path
) -> None:
    code, out, result, killed = await restore_lazily(
        clm_runc, tmp_path, None, page_server=("127.0.0.1", 4711)
    )
    assert code == 1 and "post-copy" in out, out
    assert result is not None and result.code == 1 and "post-copy" in result.errors
    assert not (tmp_path / "calls").exists()  # runc never restored it without its memory
    assert killed == []


async def test_a_failed_lazy_restore_leaves_no_daemon(
    clm_runc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RUNC_EXIT", "1")  # CRIU could not restore the container
    code, out, result, killed = await restore_lazily(clm_runc, tmp_path, ["sleep", "30"])
    assert code == 1 and result is not None and result.code == 1 and result.page_fill is None
    assert killed == []  # nothing runs to be ended, and the daemon went with the restore


async def test_a_clone_restored_after_its_move_was_withdrawn_is_ended_with_its_daemon(
    clm_runc: Path, tmp_path: Path
) -> None:
    _, _, _, killed = await restore_lazily(clm_runc, tmp_path, ["sleep", "30"], withdraw=True)
    assert killed == ["c1"]


async def test_a_clones_create_waiting_for_its_images_is_seen_before_the_freeze(
    clm_runc: Path, tmp_path: Path
) -> None:
    runc = fake_runc(tmp_path)
    server = await RestoreHandlerServer(tmp_path / "h.sock").start()
    try:
        assert not await server.wait_parked("games/mc-0", 0.05)  # kubelet has not got there
        clone = bundle(tmp_path / "c1", CLONE)
        creating = asyncio.create_task(
            call(clm_runc, server.socket_path, runc, "create", "--bundle", str(clone), "c1")
        )
        assert await server.wait_parked("games/mc-0", 10)
        assert not await server.wait_parked("games/other", 0.05)
        package = tmp_path / "package"
        (package / "criu").mkdir(parents=True)
        server.offer(source="games/mc-0", container="server", package=package)
        code, out = await asyncio.wait_for(creating, 10)
        assert code == 0, out
        assert server.parked == {}  # restored: nothing waits any more
    finally:
        await server.stop()
