from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.page_fills import FILLING, PageFills
from services.checkpoint_agent.runtime import PageFill


class Deletes:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, container_id: str) -> None:
        self.deleted.append(container_id)


def test_containers_an_earlier_agent_was_filling_are_stopped_at_start(tmp_path: Path) -> None:
    # Their page streams died with that agent: what did not arrive would read as zeros.
    layout = Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    layout.workdir("m1").mkdir(parents=True)
    (layout.workdir("m1") / FILLING).write_text("c-app\nc-sidecar")
    layout.workdir("m2").mkdir(parents=True)  # a migration with no fill running
    runtime = Deletes()
    fills = PageFills(runtime, layout)  # type: ignore[arg-type]  # only delete is used
    assert fills.stop_orphans() == ["c-app", "c-sidecar"]
    assert runtime.deleted == ["c-app", "c-sidecar"]
    assert not (layout.workdir("m1") / FILLING).exists()
    assert fills.stop_orphans() == []


class LocalRuntime(Deletes):
    """restore_lazy starts `daemon` (a stand-in for `criu lazy-pages` that exits as told)."""

    def __init__(self, daemon: list[str]) -> None:
        super().__init__()
        self.daemon = daemon
        self.events: list[str] = []

    def restore_lazy(self, container_id: str, bundle: Path, images: Path, **kwargs: object) -> PageFill:
        assert kwargs["page_server"] is None  # the local images, not the source
        return PageFill(container_id, images, subprocess.Popen(self.daemon))

    def delete(self, container_id: str) -> None:
        self.events.append(f"delete {container_id}")
        super().delete(container_id)


def local(tmp_path: Path, daemon: list[str]) -> tuple[PageFills, LocalRuntime, Layout]:
    layout = Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    layout.workdir("m1").mkdir(parents=True)
    runtime = LocalRuntime(daemon)
    return PageFills(runtime, layout), runtime, layout  # type: ignore[arg-type]  # the calls used


async def start(fills: PageFills, tmp_path: Path) -> None:
    await fills.restore_local(
        "m1", name="app", container_id="c-app", bundle=tmp_path, images=tmp_path, output=None
    )
    fills.resumed("m1")


async def test_a_local_fill_is_waited_for_after_the_commit_and_leaves_the_pod_running(tmp_path: Path) -> None:
    fills, runtime, layout = local(tmp_path, ["sleep", "0.2"])
    await start(fills, tmp_path)
    assert fills.filling("m1") and (layout.workdir("m1") / FILLING).read_text() == "c-app"
    details, problems = await fills.wait("m1")
    assert problems == [] and runtime.deleted == []
    assert details["containers"] == 1 and details["pages_from"] == "local images"
    assert float(details["risk_window_seconds"]) > 0
    # Whole: an agent restarting now would leave it running.
    assert not (layout.workdir("m1") / FILLING).exists() and not fills.filling("m1")


async def test_a_local_fill_that_fails_stops_the_container_at_once(tmp_path: Path) -> None:
    fills, runtime, _ = local(tmp_path, ["sh", "-c", "sleep 0.1; exit 3"])
    await start(fills, tmp_path)
    details, problems = await fills.wait("m1")
    assert runtime.deleted == ["c-app"]
    assert problems and "exited 3" in problems[0]


async def test_cancelling_a_local_fill_stops_the_container_before_its_daemon(tmp_path: Path) -> None:
    fills, runtime, layout = local(tmp_path, ["sleep", "30"])
    await start(fills, tmp_path)
    await fills.cancel("m1")
    assert runtime.events[0] == "delete c-app"
    assert not (layout.workdir("m1") / FILLING).exists() and not fills.filling("m1")


def test_an_agent_that_restarts_remembers_which_migrations_lost_their_fill(tmp_path: Path) -> None:
    fills, _, layout = local(tmp_path, ["true"])
    (layout.workdir("m1") / FILLING).write_text("c-app")
    assert fills.stop_orphans() == ["c-app"] and fills.orphaned == {"m1"}


async def test_a_fill_restored_by_containerd_is_watched_like_a_local_one(tmp_path: Path) -> None:
    # containerd's shim restored the container; the agent's daemon fills it after the commit.
    fills, runtime, layout = local(tmp_path, [])
    daemon = await asyncio.to_thread(subprocess.Popen, ["sh", "-c", "sleep 0.2; exit 5"])
    fills.adopt("m1", name="app", page_fill=PageFill("c-app", tmp_path, daemon))
    fills.resumed("m1")
    assert fills.filling("m1") and (layout.workdir("m1") / FILLING).read_text() == "c-app"
    _, problems = await fills.wait("m1")
    assert runtime.deleted == ["c-app"]  # never running on memory that did not arrive
    assert len(problems) == 1 and "exited 5" in problems[0]


def tunnel_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


async def test_a_post_copy_fill_restored_by_containerd_gets_its_tunnel(tmp_path: Path) -> None:
    # The tunnel opens before the offer (its daemon is pointed at it); the restore it serves
    # adopts it, and the fill counts as coming from the source.
    fills, runtime, _ = local(tmp_path, [])
    fill = await fills.tunnel("m1", name="app", images=tmp_path, pages_address="a:1", tls=None)  # type: ignore[arg-type]  # never reached
    host, port = fill.page_server()
    assert host == "127.0.0.1" and port > 0
    assert not fills.filling("m1")  # nothing restored through it yet
    daemon = await asyncio.to_thread(subprocess.Popen, ["sleep", "0.1"])
    fills.adopt("m1", name="app", page_fill=PageFill("c-app", tmp_path, daemon), tunnel=fill)
    await fills.close_pending("m1")  # it is adopted: left open
    fills.resumed("m1")
    assert fills.filling("m1") and fill.container_id == "c-app"
    details, problems = await fills.wait("m1")
    assert problems == [] and runtime.deleted == []
    assert details["pages_from"] == "source"


async def test_tunnels_of_containers_that_were_not_restored_are_closed(tmp_path: Path) -> None:
    fills, _, _ = local(tmp_path, [])
    pending = await fills.tunnel("m1", name="app", images=tmp_path, pages_address="a:1", tls=None)  # type: ignore[arg-type]  # never reached
    await fills.close_pending("m1")
    assert not tunnel_accepts(pending.page_server()[1]) and "m1" not in fills.by_uid
    cancelled = await fills.tunnel("m2", name="app", images=tmp_path, pages_address="a:1", tls=None)  # type: ignore[arg-type]  # never reached
    await fills.cancel("m2")
    assert not tunnel_accepts(cancelled.page_server()[1])
