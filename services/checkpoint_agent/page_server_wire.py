"""The lazy dump's page server, spoken to: CRIU's page-server protocol (criu/page-xfer.c),
as its lazy-pages daemon speaks it, over one connection.

Every message starts with a 32-byte header {u32 cmd, u64 nr_pages, u64 vaddr, u64 dst_id}.
The daemon asks PS_IOV_GET(nr_pages, vaddr, pid); the server answers PS_IOV_ADD_F with the
header repeated (nr_pages cut to what it holds there in one piece) and that many pages.
PS_IOV_CLOSE is answered with a 32-bit status. The server reads its pages from pipes (tee:
a page can be asked for again), and when the connection ends or closes, its dump has
succeeded and ends the dumped tasks. So whoever holds the one connection decides when the
pod may end on the source.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from services.checkpoint_agent.pagemap import PAGE_SIZE, as_full_pagemap, lazy_ranges

HEADER = struct.Struct("<I4xQQQ")
STATUS = struct.Struct("<i")
PS_IOV_ADD_F = 6
PS_IOV_GET = 7
PS_IOV_CLOSE = 0x1023
PS_IOV_FORCE_CLOSE = 0x1024
PS_CMD_MASK = (1 << 16) - 1
CLOSES = (PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE)
CHUNK = 1 << 20
# The most pages asked for at once when the agent takes the memory back itself.
TAKE_BACK_PAGES = 256


class PageServerGone(ConnectionError):
    pass


def command_of(header: bytes) -> int:
    return int(HEADER.unpack(header)[0]) & PS_CMD_MASK


def get_request(pid: int, vaddr: int, pages: int) -> bytes:
    return HEADER.pack(PS_IOV_GET, pages, vaddr, pid)


def answered_pages(header: bytes) -> int:
    cmd, pages, _, _ = HEADER.unpack(header)
    if cmd & PS_CMD_MASK != PS_IOV_ADD_F:
        raise PageServerGone(f"the page server answered command {cmd:#x}, not pages")
    return int(pages)


class PageServerConnection:
    """One connection to a lazy dump's page server, for asyncio (a plain socket, so it can
    pass from the relay to the rollback at a message boundary)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)  # noqa: FBT003 - socket's own API
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def recv(self, most: int) -> bytes:
        data = await self.loop.sock_recv(self.sock, most)
        if not data:
            raise PageServerGone("the page server hung up")
        return data

    async def recv_exactly(self, count: int) -> bytes:
        parts, left = [], count
        while left:
            data = await self.recv(min(left, CHUNK))
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    async def get(self, pid: int, vaddr: int, pages: int) -> tuple[int, bytes]:
        """(pages answered, their bytes) for up to `pages` pages at `vaddr` of task `pid`."""
        await self.send(get_request(pid, vaddr, pages))
        got = answered_pages(await self.recv_exactly(HEADER.size))
        if got <= 0:
            raise PageServerGone(f"the page server has no pages at {vaddr:#x} of task {pid}")
        return got, await self.recv_exactly(got * PAGE_SIZE)

    async def end(self) -> None:
        """Close the session: the dump then ends its tasks (they run elsewhere, or their
        memory is in the images now)."""
        try:
            await self.send(HEADER.pack(PS_IOV_CLOSE, 0, 0, 0))
            await self.recv_exactly(STATUS.size)
        except OSError:
            pass  # a server gone already has ended its dump
        finally:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()


async def take_back(conn: PageServerConnection, image_dir: Path) -> int:
    """Make a lazy dump in `image_dir` a full one: every page its page server holds, written
    into the pages files where a full dump has them, and its pagemaps marked so. Returns the
    bytes fetched. The pagemap is replaced last: until then a restore sees the lazy dump."""
    fetched = 0
    for pagemap in sorted(image_dir.glob("pagemap-*.img")):
        pid = int(pagemap.stem.split("-", 1)[1])
        raw = pagemap.read_bytes()
        pages_id, ranges = lazy_ranges(raw)
        if all(in_file for _, _, in_file in ranges):
            continue
        pages_file = image_dir / f"pages-{pages_id}.img"
        partial = pages_file.with_suffix(".full")
        with pages_file.open("rb") as old, partial.open("wb") as new:
            for vaddr, pages, in_file in ranges:
                if in_file:
                    new.write(old.read(pages * PAGE_SIZE))
                    continue
                done = 0
                while done < pages:
                    got, data = await conn.get(
                        pid, vaddr + done * PAGE_SIZE, min(TAKE_BACK_PAGES, pages - done)
                    )
                    new.write(data)
                    done += got
                    fetched += len(data)
        full_map = pagemap.with_suffix(".full")
        full_map.write_bytes(as_full_pagemap(raw))
        partial.replace(pages_file)
        full_map.replace(pagemap)
    return fetched
