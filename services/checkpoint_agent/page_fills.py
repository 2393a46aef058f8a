"""The destination's fills: restored containers whose memory is still being put in place.

A lazy restore resumes the pod before its memory is there; a `criu lazy-pages` daemon per
container fills it, on demand first. Post-copy's daemons reach the source's page server
through a PageTunnel; stop-and-copy's and pre-copy's read the images that already arrived,
so the network commit need not wait for them (the fill step waits, after it). A daemon that
ends without every page would leave the process running on zero-filled memory (closing
userfaultfd lets the kernel fill the rest with zeros), so:
- when the source's side of a tunnel ends, the container is paused before the daemon hears
  of it; a daemon that then exits 0 had every page (the container resumes), any other exit
  stops the container for good;
- a watcher acts on the daemon's exit at once, whether or not the fill step was asked yet;
- an agent that restarts stops the containers that were still filling (`stop_orphans`):
  it cannot learn how their daemons ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.outcomes import Details
from services.checkpoint_agent.page_prefetch import lazy_memory
from services.checkpoint_agent.page_relay import PageTunnel
from services.checkpoint_agent.progress import Report
from services.checkpoint_agent.runc import LAZY_FILL_TIMEOUT, LAZY_LOG
from services.checkpoint_agent.runtime import ContainerRuntime, PageFill, RuntimeCommandError
from services.checkpoint_agent.tls import AgentTls

log = logging.getLogger(__name__)
# In a migration's work directory while its containers' memory arrives: their ids.
FILLING = "filling"


@dataclass
class Fill:
    name: str
    container_id: str
    # Post-copy: where the pages come from; None when they come from the local images.
    tunnel: PageTunnel | None
    page_fill: PageFill | None = None
    paused: bool = False
    watcher: asyncio.Task[int] | None = None
    ended_at: float = 0.0

    def page_server(self) -> tuple[str, int]:
        """Where this fill's daemon asks for pages: its tunnel's local end."""
        assert self.tunnel is not None, "a fill from local images has no page server"
        return ("127.0.0.1", self.tunnel.port)


@dataclass
class MigrationFills:
    fills: list[Fill] = field(default_factory=list)
    # Tunnels opened for containers not restored yet (see PageFills.tunnel).
    pending: list[Fill] = field(default_factory=list)
    resumed_at: float = 0.0
    # The fill step's progress report, once the step was asked: the bytes that arrived.
    report: Report | None = None

    def received(self) -> int:
        return sum(f.tunnel.traffic.to_destination for f in self.fills if f.tunnel is not None)

    def arrived(self) -> None:
        if self.report is not None:
            self.report(self.received())


class PageFills:
    def __init__(self, runtime: ContainerRuntime, layout: Layout) -> None:
        self.runtime, self.layout = runtime, layout
        self.by_uid: dict[str, MigrationFills] = {}
        # Migrations whose containers an earlier agent was still filling (stopped at start).
        self.orphaned: set[str] = set()

    def stop_orphans(self) -> list[str]:
        """At start: containers an earlier agent was still filling. Their page streams died
        with it, or their daemons' outcome is unknown to this agent, so their memory may be
        incomplete: they are stopped (the fill step then fails)."""
        stopped = []
        for marker in (self.layout.state_dir / "migrations").glob(f"*/{FILLING}"):
            for container_id in marker.read_text().split():
                self.runtime.delete(container_id)
                stopped.append(container_id)
            self.orphaned.add(marker.parent.name)
            marker.unlink()
        return stopped

    def filling(self, uid: str) -> bool:
        """Whether the migration's restore left memory to fill (its fill step waits for it)."""
        return bool(self.by_uid.get(uid, MigrationFills()).fills)

    def _mark(self, uid: str) -> None:
        """The containers still filling, on disk for an agent that restarts."""
        mine = self.by_uid.get(uid)
        marker = self.layout.workdir(uid) / FILLING
        running = [f.container_id for f in mine.fills if not f.ended_at] if mine else []
        if running:
            marker.write_text("\n".join(running))
        else:
            marker.unlink(missing_ok=True)

    async def tunnel(self, uid: str, *, name: str, images: Path, pages_address: str, tls: AgentTls) -> Fill:
        """A page tunnel to the source for one container about to be restored with post-copy:
        its lazy-pages daemon is pointed at `127.0.0.1:fill.tunnel.port`. The fill stays
        pending (closed by `cancel` or `close_pending`) until the restored container is
        watched (`restore`, `adopt`)."""
        mine = self.by_uid.setdefault(uid, MigrationFills())
        fill = Fill(name=name, container_id="", tunnel=None)

        async def source_ended() -> None:
            # Only once the restore is over: pausing tasks CRIU is still restoring would hang
            # it (before then, the restore fails on the lost daemon and rolls back).
            if mine.resumed_at and fill.container_id:
                fill.paused = True
                with contextlib.suppress(RuntimeCommandError):
                    await asyncio.to_thread(self.runtime.pause, fill.container_id)

        fill.tunnel = PageTunnel(
            address=pages_address,
            migration=uid,
            container=name,
            tls=tls,
            source_ended=source_ended,
            received=mine.arrived,
            memory=lazy_memory(images),
        )
        await fill.tunnel.open()
        mine.pending.append(fill)
        return fill

    async def restore(
        self,
        uid: str,
        *,
        name: str,
        container_id: str,
        bundle: Path,
        images: Path,
        pages_address: str,
        tls: AgentTls,
        output: Path | None,
    ) -> None:
        """Restore one container with its memory still on the source; it runs when this returns."""
        fill = await self.tunnel(uid, name=name, images=images, pages_address=pages_address, tls=tls)
        fill.container_id = container_id
        try:
            await self._start(uid, fill, bundle, images, page_server=fill.page_server(), output=output)
        except BaseException:
            self.by_uid[uid].pending.remove(fill)
            assert fill.tunnel is not None
            await fill.tunnel.close()
            raise

    async def restore_local(
        self, uid: str, *, name: str, container_id: str, bundle: Path, images: Path, output: Path | None
    ) -> None:
        """Restore one container whose images are all here; it runs when this returns, and
        its memory is filled from the images (LazyPagesUnavailable: restore it eagerly)."""
        self.by_uid.setdefault(uid, MigrationFills())
        fill = Fill(name=name, container_id=container_id, tunnel=None)
        await self._start(uid, fill, bundle, images, page_server=None, output=output)

    async def _start(
        self,
        uid: str,
        fill: Fill,
        bundle: Path,
        images: Path,
        *,
        page_server: tuple[str, int] | None,
        output: Path | None,
    ) -> None:
        fill.page_fill = await asyncio.to_thread(
            self.runtime.restore_lazy,
            fill.container_id,
            bundle,
            images,
            page_server=page_server,
            output=output,
        )
        code = fill.page_fill.daemon.poll()
        if code is not None and code != 0:
            # It ended during the restore: the memory will not come.
            await asyncio.to_thread(self.runtime.delete, fill.container_id)
            why = (fill.tunnel.error if fill.tunnel else "") or _lazy_log_error(fill)
            raise RuntimeCommandError(
                f"the lazy-pages daemon of {fill.name} exited {code} during the restore ({why})"
            )
        self._watched(uid, fill)

    def adopt(self, uid: str, *, name: str, page_fill: PageFill, tunnel: Fill | None = None) -> None:
        """A container restored lazily by containerd's shim (through the restore handler),
        its daemon still filling, from the local images or through `tunnel` (post-copy):
        watched and waited for like `restore_local`'s and `restore`'s."""
        self.by_uid.setdefault(uid, MigrationFills())
        if tunnel is None:
            fill = Fill(name=name, container_id=page_fill.container_id, tunnel=None)
        else:
            fill = tunnel
            fill.container_id = page_fill.container_id
        fill.page_fill = page_fill
        self._watched(uid, fill)

    async def close_pending(self, uid: str, *, whole: frozenset[str] = frozenset()) -> None:
        """Tunnels whose container is not being filled through them (its restore failed, or
        its daemon had every page before anyone watched it: the containers named in
        `whole`): closed."""
        mine = self.by_uid.get(uid)
        pending = mine.pending if mine else []
        if mine is not None:
            mine.pending = []
        for fill in pending:
            assert fill.tunnel is not None
            if fill.name in whole:
                fill.tunnel.daemon_exited(0)
            await fill.tunnel.close()
        if mine is not None and not mine.fills:
            self.by_uid.pop(uid, None)

    def _watched(self, uid: str, fill: Fill) -> None:
        mine = self.by_uid[uid]
        if fill in mine.pending:
            mine.pending.remove(fill)
        fill.watcher = asyncio.create_task(self._watch(uid, fill))
        mine.fills.append(fill)
        self._mark(uid)

    def broken(self, uid: str) -> list[str]:
        """Fills whose daemon already failed (their containers are stopped)."""
        mine = self.by_uid.get(uid)
        problems = []
        for f in mine.fills if mine else []:
            if f.watcher is None or not f.watcher.done() or f.watcher.cancelled():
                continue
            if (code := f.watcher.result()) != 0:
                why = (f.tunnel.error if f.tunnel else "") or _lazy_log_error(f)
                problems.append(f"container {f.name}: the lazy-pages daemon exited {code} ({why})")
        return problems

    def resumed(self, uid: str) -> None:
        self.by_uid.setdefault(uid, MigrationFills()).resumed_at = time.monotonic()

    async def _watch(self, uid: str, fill: Fill) -> int:
        assert fill.page_fill is not None
        daemon = fill.page_fill.daemon
        # A local fill reads images on this node: one that takes this long is stuck. A
        # post-copy fill is bounded by its tunnel (the source's side ending).
        timeout = LAZY_FILL_TIMEOUT if fill.tunnel is None else None
        try:
            code = await asyncio.to_thread(daemon.wait, timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = await asyncio.to_thread(daemon.wait)
            log.warning("a local page fill took too long: its daemon was killed", extra={"seconds": timeout})
        fill.ended_at = time.monotonic()
        if fill.tunnel is not None:
            fill.tunnel.daemon_exited(code)
            await fill.tunnel.close()
        if code == 0:
            if fill.paused:
                await asyncio.to_thread(self.runtime.resume, fill.container_id)
            # Whole: an agent that restarts from here leaves it running.
            self._mark(uid)
        else:
            # Never a process running on memory that did not arrive.
            await asyncio.to_thread(self.runtime.delete, fill.container_id)
            log.warning(
                "page fill failed: container stopped",
                extra={
                    "container": fill.container_id,
                    "exit": code,
                    "tunnel": fill.tunnel.error if fill.tunnel else None,
                },
            )
        return code

    async def wait(self, uid: str, report: Report | None = None) -> tuple[Details, list[str]]:
        """Wait for every fill of the migration: the measurements, and what went wrong.
        `report` hears the bytes that arrived, as they arrive."""
        mine = self.by_uid.get(uid)
        if mine is None:
            return {}, ["this agent has no record of the migration's page fill (did it restart?)"]
        mine.report = report
        mine.arrived()
        codes = await asyncio.gather(*(f.watcher for f in mine.fills if f.watcher is not None))
        if report is not None:
            report(mine.received(), last=True)
        problems = []
        for fill, code in zip(mine.fills, codes, strict=True):
            if code != 0:
                why = (fill.tunnel.error if fill.tunnel else "") or _lazy_log_error(fill)
                problems.append(f"container {fill.name}: the lazy-pages daemon exited {code} ({why})")
        last = max((f.ended_at for f in mine.fills), default=mine.resumed_at)
        details: Details = {
            "containers": len(mine.fills),
            "pages_bytes": mine.received(),
            "risk_window_seconds": round(max(0.0, last - mine.resumed_at), 6),
            "pages_from": "source" if any(f.tunnel for f in mine.fills) else "local images",
        }
        self.by_uid.pop(uid, None)
        self._mark(uid)
        return details, problems

    async def cancel(self, uid: str) -> None:
        """A restore that failed or is aborted: no daemon or tunnel is left."""
        mine = self.by_uid.pop(uid, None)
        self._mark(uid)
        for fill in mine.pending if mine else []:
            assert fill.tunnel is not None
            await fill.tunnel.close()
        for fill in mine.fills if mine else []:
            if fill.page_fill is not None and fill.page_fill.daemon.poll() is None:
                # The container first: it must not run on once its daemon is gone.
                await asyncio.to_thread(self.runtime.delete, fill.container_id)
                fill.page_fill.daemon.kill()
            if fill.tunnel is not None:
                await fill.tunnel.close()
            if fill.watcher is not None:
                await asyncio.gather(fill.watcher, return_exceptions=True)


def _lazy_log_error(fill: Fill) -> str:
    if fill.page_fill is None:
        return "no daemon"
    log_file = fill.page_fill.image_dir / LAZY_LOG
    if not log_file.exists():
        return "no log"
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if "Error" in line]
    return "; ".join(lines[-2:]) or "no error in its log"
