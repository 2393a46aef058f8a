"""The destination's side of a post-copy fill at channel speed.

CRIU's lazy-pages daemon asks for one range at a time in the background (64 KiB growing
to 4 MiB, back to 64 KiB at every page fault) and waits for each answer, so across two
agents and a TLS hop its fill is bound by the round trip, not by the channel. Here the
destination's agent asks the source for all the lazily restorable memory itself, in
1 MiB requests with many in flight, and answers the daemon from what arrived: the
daemon's round trip becomes local. A range the daemon asks for before its turn is asked
for at once (a fault jumps the queue), and at most AHEAD_BYTES are held that the daemon
has not taken yet.

Both sides speak CRIU's page-server protocol (page_server_wire). Answers reach the daemon
in the order it asked, and may be shorter than asked: the daemon asks again for the rest,
as it does with CRIU's own page server.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.page_server_wire import (
    CLOSES,
    HEADER,
    PS_IOV_ADD_F,
    PS_IOV_GET,
    STATUS,
    answered_pages,
    command_of,
    get_request,
)
from services.checkpoint_agent.pagemap import PAGE_SIZE, PE_PRESENT, lazy_ranges

REQUEST_PAGES = 256
AHEAD_BYTES = 64 << 20
CHUNK = 1 << 20


class SourceGone(ConnectionError):
    pass


def lazy_memory(image_dir: Path) -> list[tuple[int, int, int]]:
    """[(pid, vaddr, pages)...]: what the lazy dump in `image_dir` left to its page server."""
    out = []
    for pagemap in sorted(image_dir.glob("pagemap-*.img")):
        pid = int(pagemap.stem.split("-", 1)[1])
        _, ranges = lazy_ranges(pagemap.read_bytes())
        out += [(pid, vaddr, pages) for vaddr, pages, in_file in ranges if not in_file]
    return out


@dataclass
class _Chunk:
    pid: int
    start: int
    pages: int
    requested: bool = False
    arrived: int = 0  # pages, contiguous from `start`
    served: int = 0
    data: bytearray | None = None
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def end(self) -> int:
        return self.start + self.pages * PAGE_SIZE


class Prefetch:
    """One container's fill: `source` is the stream to the source's relay, `daemon` the
    lazy-pages daemon's connection. `received(n)` hears each piece that arrived."""

    def __init__(
        self,
        memory: list[tuple[int, int, int]],
        *,
        received: Callable[[int], None],
        source_ended: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.received, self.source_ended = received, source_ended
        self._chunks: dict[int, list[_Chunk]] = {}
        self._plan: deque[_Chunk] = deque()
        for pid, vaddr, pages in memory:
            for offset in range(0, pages, REQUEST_PAGES):
                chunk = _Chunk(pid, vaddr + offset * PAGE_SIZE, min(REQUEST_PAGES, pages - offset))
                self._chunks.setdefault(pid, []).append(chunk)
                self._plan.append(chunk)
        for chunks in self._chunks.values():
            chunks.sort(key=lambda c: c.start)
        self._starts = {pid: [c.start for c in chunks] for pid, chunks in self._chunks.items()}
        # What the source owes, in the order asked: (chunk, pages) or a direct request's future.
        self._owed: deque[tuple[_Chunk, int] | asyncio.Future[bytes]] = deque()
        self._ahead = 0  # bytes asked for or held that the daemon has not taken
        self._room = asyncio.Event()
        self.failed: str | None = None
        self.error: str | None = None
        # The daemon's asks, and the pages of those the prefetch had already (the fill's shape).
        self.asks = 0
        self.pages_asked = 0
        self.ready_when_asked = 0

    def _find(self, pid: int, vaddr: int) -> _Chunk | None:
        starts = self._starts.get(pid)
        if not starts:
            return None
        index = bisect.bisect_right(starts, vaddr) - 1
        if index < 0:
            return None
        chunk = self._chunks[pid][index]
        return chunk if vaddr < chunk.end else None

    async def run(
        self,
        source_reader: asyncio.StreamReader,
        source_writer: asyncio.StreamWriter,
        daemon_reader: asyncio.StreamReader,
        daemon_writer: asyncio.StreamWriter,
    ) -> bool:
        """Until the daemon closes or goes; True if it closed in order (it has every page)."""
        self._source = source_writer
        tasks = [
            asyncio.ensure_future(self._ask_ahead()),
            asyncio.ensure_future(self._take_answers(source_reader)),
        ]
        try:
            return await self._serve_daemon(daemon_reader, daemon_writer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----- towards the source -----

    def _ask(self, chunk: _Chunk, pages: int) -> None:
        vaddr = chunk.start + (chunk.pages - pages) * PAGE_SIZE
        self._owed.append((chunk, pages))
        self._source.write(get_request(chunk.pid, vaddr, pages))

    def _request(self, chunk: _Chunk) -> None:
        chunk.requested = True
        chunk.data = bytearray(chunk.pages * PAGE_SIZE)
        self._ahead += chunk.pages * PAGE_SIZE
        self._ask(chunk, chunk.pages)

    async def _ask_ahead(self) -> None:
        while self._plan:
            while self._plan and self._ahead < AHEAD_BYTES:
                chunk = self._plan.popleft()
                if not chunk.requested:
                    self._request(chunk)
            await self._source.drain()
            self._room.clear()
            if self._plan:
                await self._room.wait()

    async def _take_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                if not self._owed:
                    raise SourceGone("the source sent pages nobody asked for")
                owed = self._owed.popleft()
                got = answered_pages(header)
                if isinstance(owed, asyncio.Future):
                    owed.set_result(header + await reader.readexactly(got * PAGE_SIZE))
                    continue
                chunk, asked = owed
                if got <= 0 or got > asked:
                    raise SourceGone(f"the source answered {got} pages of {asked} at {chunk.start:#x}")
                offset = (chunk.pages - asked) * PAGE_SIZE
                left = got * PAGE_SIZE
                assert chunk.data is not None
                while left:
                    data = await reader.read(min(CHUNK, left))
                    if not data:
                        raise SourceGone("the source's page stream ended mid-answer")
                    chunk.data[offset : offset + len(data)] = data
                    offset += len(data)
                    left -= len(data)
                    self.received(len(data))
                chunk.arrived += got
                chunk.grew.set()
                if got < asked:
                    self._ask(chunk, asked - got)  # the page server cut it short
                    await self._source.drain()
        except (asyncio.IncompleteReadError, OSError, SourceGone) as exc:
            self.failed = str(exc) or "the source's page stream ended"
        finally:
            for owed in self._owed:
                if isinstance(owed, asyncio.Future):
                    owed.cancel()
                else:
                    owed[0].grew.set()
            self.failed = self.failed or "the source's page stream ended"

    # ----- towards the daemon -----

    async def _answer(self, pid: int, vaddr: int, pages: int) -> tuple[bytes, memoryview | bytes]:
        chunk = self._find(pid, vaddr)
        if chunk is None:
            # Not in the lazy dump's pagemap as this agent read it: the source decides.
            return await self._direct(pid, vaddr, pages)
        if not chunk.requested:
            self._request(chunk)  # the daemon wants it now: ahead of the plan
            await self._source.drain()
        offset = (vaddr - chunk.start) // PAGE_SIZE
        self.asks += 1
        self.pages_asked += pages
        self.ready_when_asked += chunk.arrived > offset
        while chunk.arrived <= offset:
            if self.failed:
                raise SourceGone(self.failed)
            chunk.grew.clear()
            await chunk.grew.wait()
        give = min(pages, chunk.arrived - offset)
        assert chunk.data is not None
        # A view, not a copy (it keeps the chunk's buffer alive until written).
        data = memoryview(chunk.data)[offset * PAGE_SIZE : (offset + give) * PAGE_SIZE]
        chunk.served += give
        if chunk.served >= chunk.pages:
            chunk.data = None
            self._ahead -= chunk.pages * PAGE_SIZE
            self._room.set()
        return HEADER.pack(PS_IOV_ADD_F | PE_PRESENT << 16, give, vaddr, pid), data

    async def _direct(self, pid: int, vaddr: int, pages: int) -> tuple[bytes, bytes]:
        if self.failed:
            raise SourceGone(self.failed)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._owed.append(answer)
        self._source.write(get_request(pid, vaddr, pages))
        await self._source.drain()
        try:
            whole = await answer
        except asyncio.CancelledError:
            raise SourceGone(self.failed or "the source's page stream ended") from None
        return whole[: HEADER.size], whole[HEADER.size :]

    async def _serve_daemon(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                command = command_of(header)
                if command in CLOSES:
                    writer.write(STATUS.pack(0))
                    await writer.drain()
                    return True
                if command != PS_IOV_GET:
                    self.error = f"the lazy-pages daemon sent command {command:#x}"
                    return False
                _, pages, vaddr, pid = HEADER.unpack(header)
                try:
                    header, data = await self._answer(int(pid), int(vaddr), int(pages))
                except SourceGone as exc:
                    # The daemon must not go on with memory that will not come: the pod is
                    # paused first (the caller's hook), then the daemon hears.
                    self.error = f"the source's page stream ended before the daemon had every page ({exc})"
                    if self.source_ended is not None:
                        await self.source_ended()
                    return False
                writer.write(header)
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            return False
        finally:
            with contextlib.suppress(OSError):
                self._source.close()
