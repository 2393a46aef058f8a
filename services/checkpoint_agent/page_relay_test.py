"""The page relay and tunnel with stand-ins for CRIU's lazy dump (its page server) and
lazy-pages daemon, speaking CRIU's page-server protocol: the page server on a plain socket
as LazyDumps connects to it, the daemon at 127.0.0.1, mutual TLS between the agents. Then a
lazy dump's images made a full dump from its page server (the rollback's take-back)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from services.checkpoint_agent.certs import Pem, make_agent_cert, make_ca, write_agent_tls
from services.checkpoint_agent.page_relay import PageRelay, PageTunnel
from services.checkpoint_agent.page_server_wire import (
    HEADER,
    PS_IOV_ADD_F,
    PS_IOV_CLOSE,
    PS_IOV_GET,
    STATUS,
    PageServerConnection,
    take_back,
)
from services.checkpoint_agent.pagemap import PE_LAZY, PE_PRESENT, lazy_ranges
from services.checkpoint_agent.pagemap_test import pagemap
from services.checkpoint_agent.tls import AgentTls

PAGE_SIZE = 4096
PID = 7


def page(pid: int, vaddr: int) -> bytes:
    return struct.pack("<QQ", pid, vaddr) * (PAGE_SIZE // 16)


@pytest.fixture(scope="module")
def ca() -> Pem:
    return make_ca()


def identity(directory: Path, ca: Pem) -> AgentTls:
    write_agent_tls(directory, ca, make_agent_cert(ca))
    return AgentTls(directory)


class LazyDump:
    """Stands in for CRIU's lazy dump: serves PS_IOV_GET from memory it has (answers cut at
    `piece` pages, as CRIU's page pipes cut them), breaks off after `break_after` answers,
    and records how its session ended: "closed" (PS_IOV_CLOSE), "hung up" or "broke"."""

    def __init__(self, *, piece: int = 64, break_after: int | None = None) -> None:
        self.piece, self.break_after = piece, break_after
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.answers = 0

    async def start(self) -> socket.socket:
        """The agent's end of the connection (LazyDumps connects to the real one)."""
        mine, its = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=its)
        self.task = asyncio.create_task(self.serve(reader, writer))
        return mine

    def close(self) -> None:
        self.task.cancel()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                header = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError:
                self.ended.set_result("hung up")
                break
            cmd, pages, vaddr, pid = HEADER.unpack(header)
            if cmd == PS_IOV_CLOSE:
                writer.write(STATUS.pack(0))
                await writer.drain()
                self.ended.set_result("closed")
                break
            assert cmd == PS_IOV_GET, cmd
            if self.break_after is not None and self.answers == self.break_after:
                writer.transport.abort()
                self.ended.set_result("broke")
                return
            given = min(pages, self.piece)
            writer.write(HEADER.pack(PS_IOV_ADD_F | PE_PRESENT << 16, given, vaddr, pid))
            for n in range(given):
                writer.write(page(pid, vaddr + n * PAGE_SIZE))
            await writer.drain()
            self.answers += 1
        writer.close()


class Served:
    """Stands in for LazyDumps: one connection per container, handed back when the relay ends."""

    def __init__(self, sockets: dict[tuple[str, str], socket.socket]) -> None:
        self.sockets = sockets
        self.settled: asyncio.Future[PageServerConnection | None] = asyncio.get_running_loop().create_future()
        self.cut: Callable[[], None] | None = None

    async def open(self, uid: str, name: str, cut: Callable[[], None]) -> PageServerConnection | None:
        sock = self.sockets.pop((uid, name), None)
        self.cut = cut
        return PageServerConnection(sock) if sock is not None else None

    def settle(self, uid: str, name: str, conn: PageServerConnection | None) -> None:
        self.settled.set_result(conn)


async def relay_and_tunnel(
    tmp_path: Path, ca: Pem, page_server: socket.socket, **tunnel: object
) -> tuple[PageRelay, PageTunnel, Served]:
    served = Served({("m1", "app"): page_server})
    relay = PageRelay(tls=identity(tmp_path / "a", ca), pages=served, sent=lambda n: None)
    relay_port = await relay.start("127.0.0.1", 0)
    return (
        relay,
        await PageTunnel(
            address=f"127.0.0.1:{relay_port}",
            migration="m1",
            container="app",
            tls=identity(tmp_path / "b", ca),
            **tunnel,  # type: ignore[arg-type]  # the source_ended hook
        ).open(),
        served,
    )


async def daemon(port: int, wanted: list[tuple[int, int]], *, leave_after: int | None = None) -> bytes:
    """Stands in for the lazy-pages daemon: asks for every range at once (as its background
    fill does) and for what an answer left out, then closes the session as CRIU's daemon
    does. Returns the pages in address order. With `leave_after`, hangs up after that many
    answers, with the rest still owed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for vaddr, pages in wanted:
        writer.write(HEADER.pack(PS_IOV_GET, pages, vaddr, PID))
    await writer.drain()
    got: dict[int, bytes] = {}
    left = {vaddr: pages for vaddr, pages in wanted}
    answers = 0
    try:
        while left:
            if leave_after is not None and answers == leave_after:
                break
            _, given, vaddr, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            answers += 1
            got[vaddr] = await reader.readexactly(given * PAGE_SIZE)
            rest = left.pop(vaddr) - given
            if rest:
                following = vaddr + given * PAGE_SIZE
                left[following] = rest
                writer.write(HEADER.pack(PS_IOV_GET, rest, following, PID))
                await writer.drain()
        else:
            writer.write(HEADER.pack(PS_IOV_CLOSE, 0, 0, 0))
            await writer.drain()
            assert STATUS.unpack(await reader.readexactly(STATUS.size)) == (0,)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    return b"".join(got[vaddr] for vaddr in sorted(got))


def memory(pid: int, vaddr: int, pages: int) -> bytes:
    return b"".join(page(pid, vaddr + n * PAGE_SIZE) for n in range(pages))


async def test_a_whole_fill_crosses_in_tls_and_the_dump_is_not_ended_by_the_daemon(
    tmp_path: Path, ca: Pem
) -> None:
    dump = LazyDump(piece=64)
    relay, tunnel, served = await relay_and_tunnel(tmp_path, ca, await dump.start())
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, [(0x10000, 100), (0x900000, 3)]), 10)
        conn = await asyncio.wait_for(served.settled, 10)
        # The daemon's close was answered by the relay: the dump still serves, its pod alive.
        assert not dump.ended.done()
        assert conn is not None
        await conn.end()  # the finalize's turn
        assert await asyncio.wait_for(dump.ended, 10) == "closed"
    finally:
        await relay.stop()
        dump.close()
    assert got == memory(PID, 0x10000, 100) + memory(PID, 0x900000, 3)
    assert tunnel.traffic.to_destination == len(got) + 3 * HEADER.size + STATUS.size  # 64+36, 3
    assert tunnel.error is None


async def test_a_daemon_that_leaves_mid_fill_hands_the_connection_back_at_a_boundary(
    tmp_path: Path, ca: Pem
) -> None:
    dump = LazyDump(piece=8)
    relay, tunnel, served = await relay_and_tunnel(tmp_path, ca, await dump.start())
    try:
        wanted = [(0x10000 + n * 0x100000, 8) for n in range(20)]
        await asyncio.wait_for(daemon(tunnel.port, wanted, leave_after=2), 10)
        conn = await asyncio.wait_for(served.settled, 10)
        assert conn is not None and not dump.ended.done()
        # The answers still owed were read and dropped: the next one is the rollback's own.
        assert await conn.get(PID, 0x5000, 2) == (2, memory(PID, 0x5000, 2))
        conn.close()
        assert await asyncio.wait_for(dump.ended, 10) == "hung up"
    finally:
        await relay.stop()
        dump.close()


async def test_a_source_that_breaks_mid_fill_is_seen_before_the_daemon_hears(tmp_path: Path, ca: Pem) -> None:
    dump = LazyDump(piece=8, break_after=3)
    order: list[str] = []

    async def source_ended() -> None:
        order.append("paused")

    relay, tunnel, served = await relay_and_tunnel(
        tmp_path, ca, await dump.start(), source_ended=source_ended
    )
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, [(0x10000, 512)]), 10)
        order.append("daemon saw the end")
        assert await asyncio.wait_for(served.settled, 10) is None  # nothing to take back
    finally:
        await relay.stop()
        dump.close()
    assert len(got) == 3 * 8 * PAGE_SIZE
    assert order == ["paused", "daemon saw the end"]
    assert "ended before the daemon had every page" in (tunnel.error or "")


async def test_a_lazy_dump_is_made_a_full_one_from_its_page_server(tmp_path: Path) -> None:
    present = memory(99, 0x400000, 2) + memory(99, 0x900000, 1)
    (tmp_path / f"pagemap-{PID}.img").write_bytes(
        pagemap(3, [(0x400000, 2, PE_PRESENT), (0x600000, 300, PE_LAZY), (0x900000, 1, PE_PRESENT)])
    )
    (tmp_path / "pages-3.img").write_bytes(present)
    dump = LazyDump(piece=50)
    conn = PageServerConnection(await dump.start())
    try:
        fetched = await take_back(conn, tmp_path)
        await conn.end()
        assert await asyncio.wait_for(dump.ended, 10) == "closed"
    finally:
        dump.close()
    assert fetched == 300 * PAGE_SIZE
    assert (tmp_path / "pages-3.img").read_bytes() == (
        memory(99, 0x400000, 2) + memory(PID, 0x600000, 300) + memory(99, 0x900000, 1)
    )
    _, ranges = lazy_ranges((tmp_path / f"pagemap-{PID}.img").read_bytes())
    assert all(in_file for _, _, in_file in ranges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pagemap-7.img", "pages-3.img"]


async def test_an_unknown_migration_or_a_stranger_is_refused(tmp_path: Path, ca: Pem) -> None:
    relay = PageRelay(tls=identity(tmp_path / "a", ca), pages=Served({}), sent=lambda n: None)
    relay_port = await relay.start("127.0.0.1", 0)
    tunnel = await PageTunnel(
        address=f"127.0.0.1:{relay_port}", migration="nope", container="app", tls=identity(tmp_path / "b", ca)
    ).open()
    stranger = await PageTunnel(
        address=f"127.0.0.1:{relay_port}",
        migration="m1",
        container="app",
        tls=identity(tmp_path / "c", make_ca()),
    ).open()
    try:
        assert await asyncio.wait_for(daemon(tunnel.port, [(0x1000, 1)]), 10) == b""
        assert "no pages served here for nope/app" in (tunnel.error or "")
        assert await asyncio.wait_for(daemon(stranger.port, [(0x1000, 1)]), 10) == b""
        assert stranger.error is not None  # the TLS handshake failed: not this cluster's agent
    finally:
        await relay.stop()


async def test_the_tunnel_fetches_the_memory_ahead_and_answers_the_daemon_from_it(
    tmp_path: Path, ca: Pem
) -> None:
    dump = LazyDump(piece=100)  # the page server cuts answers at 100 pages
    relay, tunnel, served = await relay_and_tunnel(
        tmp_path, ca, await dump.start(), memory=[(PID, 0x10000, 1000), (PID, 0x900000, 3)]
    )
    try:
        # A fault far ahead first, then the background fill in 16-page asks.
        wanted = [(0x10000 + 900 * PAGE_SIZE, 1)]
        wanted += [(0x10000 + n * PAGE_SIZE, 16) for n in range(0, 896, 16)] + [(0x900000, 3)]
        got = await asyncio.wait_for(daemon(tunnel.port, wanted), 10)
        conn = await asyncio.wait_for(served.settled, 10)
        assert conn is not None and not dump.ended.done()
        conn.close()
    finally:
        await relay.stop()
        dump.close()
    expected = {0x10000 + 900 * PAGE_SIZE: memory(PID, 0x10000 + 900 * PAGE_SIZE, 1)}
    expected |= {0x10000 + n * PAGE_SIZE: memory(PID, 0x10000 + n * PAGE_SIZE, 16) for n in range(0, 896, 16)}
    expected[0x900000] = memory(PID, 0x900000, 3)
    assert got == b"".join(expected[v] for v in sorted(expected))
    assert tunnel.error is None
    # The source was asked in requests of up to 256 pages, not the daemon's 16.
    assert dump.answers < len(wanted), dump.answers
    assert tunnel.traffic.to_destination == 1003 * PAGE_SIZE


async def test_a_prefetching_tunnel_pauses_the_pod_before_the_daemon_hears_the_source_broke(
    tmp_path: Path, ca: Pem
) -> None:
    dump = LazyDump(piece=8, break_after=3)
    order: list[str] = []

    async def source_ended() -> None:
        order.append("paused")

    relay, tunnel, served = await relay_and_tunnel(
        tmp_path, ca, await dump.start(), source_ended=source_ended, memory=[(PID, 0x10000, 512)]
    )
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, [(0x10000, 512)]), 10)
        order.append("daemon saw the end")
        assert await asyncio.wait_for(served.settled, 10) is None
    finally:
        await relay.stop()
        dump.close()
    # What arrived before the break was given (which pieces, the prefetch's order decides).
    assert 0 < len(got) <= 3 * 8 * PAGE_SIZE and got == memory(PID, 0x10000, len(got) // PAGE_SIZE)
    assert order == ["paused", "daemon saw the end"]
    assert "ended before the daemon had every page" in (tunnel.error or "")
