"""The agent's side of the restore handler: a Unix socket clm-runc asks on, and the offers of
images the destination's restore step makes for a clone's containers.

The restore step offers each container's images and waits; kubelet creates the clone's
containers whenever it gets to them (a Deployment's clone exists before the dump, so its
`create` usually comes first and waits here for the images). Whichever comes second
completes the pair: the handler is told to run `runc restore`, reports its exit status,
and the step learns the clone's container id. A lazy restore answers kubelet's create as
soon as the container runs: its memory is filled after the network commit, by a local
`criu lazy-pages` daemon the step hands to the agent's fills. Wire format: clm-runc.c.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.containerd import apply_empty_dirs, apply_rootfs_diff
from services.checkpoint_agent.restore_handler.calls import (
    SANDBOX_ID,
    CallError,
    Exit,
    Run,
    RuncCall,
    as_asked,
    clone_container,
    parse,
    restore_command,
)
from services.checkpoint_agent.runc import LAZY_LOG, criu_log_tail
from services.checkpoint_agent.runtime import PageFill

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20


@dataclass(frozen=True)
class Restored:
    container_id: str
    code: int
    errors: str
    # A lazy restore: the daemon still putting the container's memory in place.
    page_fill: PageFill | None = None


@dataclass
class Offer:
    source: str  # namespace/name of the pod the clone restores
    container: str
    package: Path  # the container's package: criu/, rootfs-diff.tar, deleted.files
    # Post-copy: where the lazy-pages daemon gets the memory (the agent's tunnel to the
    # source); None when it is all in the package.
    page_server: tuple[str, int] | None = None
    result: asyncio.Future[Restored] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    taken: bool = False

    @property
    def images(self) -> Path:
        return self.package / "criu"


def _errors(call: RuncCall, work: Path) -> str:
    lines: list[str] = []
    if call.log is not None and call.log.exists():
        lines += [
            json.loads(line).get("msg", line)
            for line in call.log.read_text(errors="replace").splitlines()
            if '"level":"error"' in line
        ]
    restore_log = work / "restore.log"
    if restore_log.exists():
        lines += [line for line in restore_log.read_text(errors="replace").splitlines() if "Error" in line]
    return "\n".join(lines[-8:])


def _lazy_log_tail(images: Path) -> str:
    return criu_log_tail(images, LAZY_LOG) or "no log"


class RestoreHandlerServer:
    def __init__(
        self,
        socket_path: Path,
        *,
        create_wait_seconds: float = 90.0,
        lazy_pages: Callable[[Path, tuple[str, int] | None], subprocess.Popen[bytes] | None] | None = None,
        kill: Callable[[str], None] | None = None,
    ) -> None:
        self.socket_path, self.create_wait_seconds = socket_path, create_wait_seconds
        # Memory restored lazily (a `criu lazy-pages` daemon for the received images, its
        # pages from them or from a page server, or None where it cannot start), as the runc
        # runtime's restore does; and how a container whose memory did not all arrive is ended.
        self.lazy_pages, self.kill = lazy_pages, kill
        self.offers: dict[tuple[str, str], Offer] = {}
        self.restored: set[str] = set()
        self._offered = asyncio.Event()
        # Sources (namespace/name) whose clone has a container create waiting for its images.
        self.parked: dict[str, int] = {}
        self._parked = asyncio.Event()
        # Pod sandboxes of clones whose move this node gave up (a failed restore or fill, an
        # abort): kubelet restarting their containers is refused at once, not parked for
        # `create_wait_seconds` (which held up the clone pod's teardown as long).
        self.given_up: set[str] = set()
        self._sandboxes: dict[str, set[str]] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> RestoreHandlerServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    # ----- the restore step's side -----

    def offer(
        self, *, source: str, container: str, package: Path, page_server: tuple[str, int] | None = None
    ) -> Offer:
        offer = self.offers.get((source, container))
        if offer is None or offer.result.done():
            offer = Offer(source=source, container=container, package=package, page_server=page_server)
            self.offers[(source, container)] = offer
        self._offered.set()
        self._offered = asyncio.Event()
        return offer

    async def wait_parked(self, source: str, timeout: float) -> bool:
        """Whether kubelet's creation of a container of `source`'s clone waits here (within
        `timeout`): the clone's sandbox, network and image are ready, so its restore waits
        for nothing but the images."""
        deadline = time.monotonic() + timeout
        while not self.parked.get(source):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = self._parked
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    def withdraw(self, source: str) -> None:
        """A move given up here (rolled back, or its fill failed): its clone's containers are
        refused from now on, those waiting for their images at once."""
        for key in [k for k in self.offers if k[0] == source]:
            offer = self.offers.pop(key)
            if not offer.result.done():
                offer.result.cancel()
        self.given_up |= self._sandboxes.pop(source, set())
        self._offered.set()
        self._offered = asyncio.Event()

    # ----- clm-runc's side -----

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Arguments, each NUL-terminated, then an empty one (runc's arguments never are).
            raw = await reader.readuntil(b"\0\0")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.warning("clm-runc sent an incomplete request", extra={"error": str(exc)})
            writer.close()
            return
        argv = [a.decode(errors="replace") for a in raw[:-2].split(b"\0")]
        try:
            answer = await self._answer(argv, reader, writer)
        except CallError as exc:
            answer = Exit(2, str(exc))
        except Exception as exc:  # - whatever went wrong, clm-runc must hear why
            log.exception("answering clm-runc failed", extra={"argv": argv})
            answer = Exit(1, f"the CLM checkpoint agent failed: {exc}")
        if isinstance(answer, Exit):
            writer.write(b"exit\0" + str(answer.code).encode() + b"\0" + answer.message.encode() + b"\0")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _answer(
        self, argv: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Exit | None:
        call = parse(argv)
        if call.command == "start":
            if call.container_id in self.restored:
                return Exit(0)  # restored at create: it runs already
            return await self._run(as_asked(call, argv), reader, writer)
        if call.command != "create":
            return await self._run(as_asked(call, argv), reader, writer)
        annotations = json.loads((call.bundle / "config.json").read_text()).get("annotations") or {}
        target = clone_container(call, annotations)
        if target is None:
            return await self._run(as_asked(call, argv), reader, writer)
        if isinstance(target, Exit):
            return target
        # None where the runtime names no sandbox: nothing is then given up by it.
        sandbox = annotations.get(SANDBOX_ID) or None
        if self._gave_up(sandbox):
            return self._given_up(target)
        if sandbox is not None:
            self._sandboxes.setdefault(target[0], set()).add(sandbox)
        self.parked[target[0]] = self.parked.get(target[0], 0) + 1
        self._parked.set()
        self._parked = asyncio.Event()
        try:
            offer = await self._wait_for_offer(target, sandbox)
        finally:
            self.parked[target[0]] -= 1
            if not self.parked[target[0]]:
                del self.parked[target[0]]
        if self._gave_up(sandbox):
            return self._given_up(target)
        if offer is None:
            return Exit(
                1,
                f"no checkpoint of container {target[1]} of {target[0]} has reached this node in "
                f"{self.create_wait_seconds:g}s: a clone's containers are restored, never started fresh "
                "(kubelet tries again; a rolled back move's clone is deleted)",
            )
        offer.taken = True
        started = time.perf_counter()
        await asyncio.to_thread(apply_rootfs_diff, offer.package, call.bundle / "rootfs")
        await asyncio.to_thread(
            apply_empty_dirs, offer.package, json.loads((call.bundle / "config.json").read_text())
        )
        images = offer.images.resolve()
        daemon = (
            await asyncio.to_thread(self.lazy_pages, images, offer.page_server) if self.lazy_pages else None
        )
        if daemon is None and offer.page_server is not None:
            # The memory is on the source: an eager restore would run the pod without it.
            why = f"no lazy-pages daemon could start for post-copy ({_lazy_log_tail(images)})"
            if not offer.result.done():
                offer.result.set_result(Restored(container_id=call.container_id, code=1, errors=why))
            return Exit(1, why)
        # CRIU finds the lazy-pages daemon's socket in its work directory.
        work = images if daemon is not None else (offer.package / "restore-work").resolve()
        work.mkdir(exist_ok=True)
        run = Run(restore_command(call, images=images, work=work, lazy=daemon is not None), restores=target)
        # The shim's `start` follows the moment clm-runc exits 0 (before the agent has read
        # that status): it must already find the container counted as restored.
        self.restored.add(call.container_id)
        code = await self._run(run, reader, writer, exit_code=True)
        assert isinstance(code, int)
        page_fill = None
        if daemon is not None:
            code, page_fill = await asyncio.to_thread(self._filling, daemon, call.container_id, code, offer)
        if code != 0:
            self.restored.discard(call.container_id)
        log.info(
            "restored a clone's container",
            extra={
                "container": target[1],
                "of": target[0],
                "code": code,
                "seconds": time.perf_counter() - started,
                "filling": page_fill is not None,
            },
        )
        if not offer.result.done():
            errors = "" if code == 0 else await asyncio.to_thread(_errors, call, work)
            offer.result.set_result(
                Restored(container_id=call.container_id, code=code, errors=errors, page_fill=page_fill)
            )
        return None

    def _filling(
        self, daemon: subprocess.Popen[bytes], container_id: str, code: int, offer: Offer
    ) -> tuple[int, PageFill | None]:
        """The restore's outcome, and the fill the restore step takes over (None when the
        memory is all in place already, or will never be). A container whose memory did
        not all arrive never runs on: it is ended first, and the restore counts as failed;
        so is one whose move was withdrawn while it was restored."""
        if code == 0 and not offer.result.done():
            if daemon.poll() is None:
                return 0, PageFill(container_id=container_id, image_dir=offer.images.resolve(), daemon=daemon)
            if daemon.returncode == 0:
                return 0, None  # a small pod: filled before anyone asked
        if code == 0 and self.kill is not None:
            self.kill(container_id)
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()
        return code or 1, None

    def _gave_up(self, sandbox: str | None) -> bool:
        return sandbox is not None and sandbox in self.given_up

    @staticmethod
    def _given_up(target: tuple[str, str]) -> Exit:
        return Exit(
            1,
            f"the move of {target[0]} was given up on this node: container {target[1]} of its clone is "
            "not restored again (the clone pod is being deleted)",
        )

    async def _wait_for_offer(self, target: tuple[str, str], sandbox: str | None) -> Offer | None:
        deadline = time.monotonic() + self.create_wait_seconds
        while not self._gave_up(sandbox):
            offer = self.offers.get(target)
            if offer is not None and not offer.taken and not offer.result.done():
                return offer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offered.wait(), remaining)
        return None

    async def _run(
        self,
        run: Run,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        exit_code: bool = False,
    ):
        """Tell clm-runc to run `run.argv`; with `exit_code`, wait for its exit status."""
        writer.write(b"run\0" + b"".join(a.encode() + b"\0" for a in run.argv) + b"\0")
        await writer.drain()
        if not exit_code:
            return None
        try:
            status = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError:
            return 1  # clm-runc went away (killed with its shim): no restore to count on
        return int(status[:-1] or b"1")
