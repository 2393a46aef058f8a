"""The page relay and tunnel with stand-ins for CRIU's page server and lazy-pages daemon:
a socket pair at the page server's end, 127.0.0.1 at the daemon's, mutual TLS between the agents."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from services.checkpoint_agent.certs import Pem, make_agent_cert, make_ca, write_agent_tls
from services.checkpoint_agent.page_relay import PageRelay, PageTunnel
from services.checkpoint_agent.tls import AgentTls

PAGE = bytes(range(256)) * 16  # 4 KiB


@pytest.fixture(scope="module")
def ca() -> Pem:
    return make_ca()


def identity(directory: Path, ca: Pem) -> AgentTls:
    write_agent_tls(directory, ca, make_agent_cert(ca))
    return AgentTls(directory)


class PageServer:
    """Stands in for CRIU's page server: answers the first 8-byte request with `pages` pages
    (with `break_after`, hangs up mid-way), then records how the session ended."""

    def __init__(self, pages: int, *, break_after: int | None = None) -> None:
        self.pages, self.break_after = pages, break_after
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def start(self) -> socket.socket:
        """The agent's end of a socket pair, as the real page server is given the other."""
        mine, its = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=its)
        self.task = asyncio.create_task(self.serve(reader, writer))
        return mine

    def close(self) -> None:
        self.task.cancel()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        for n in range(self.pages):
            if self.break_after is not None and n == self.break_after:
                writer.transport.abort()
                self.ended.set_result("broke")
                return
            writer.write(PAGE)
            await writer.drain()
        try:
            rest = await reader.read()
            self.ended.set_result("orderly" if rest == b"" else f"data {rest!r}")
        except ConnectionResetError:
            self.ended.set_result("reset")
        writer.close()


async def relay_and_tunnel(
    tmp_path: Path, ca: Pem, page_server: socket.socket, **tunnel: object
) -> tuple[PageRelay, PageTunnel]:
    served = {("m1", "app"): page_server}
    relay = PageRelay(
        tls=identity(tmp_path / "a", ca),
        lookup=lambda m, c: served.pop((m, c), None),  # once, as LazyDumps.take
        sent=lambda n: None,
    )
    relay_port = await relay.start("127.0.0.1", 0)
    return relay, await PageTunnel(
        address=f"127.0.0.1:{relay_port}",
        migration="m1",
        container="app",
        tls=identity(tmp_path / "b", ca),
        **tunnel,  # type: ignore[arg-type]  # the source_ended hook
    ).open()


async def daemon(port: int, pages: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GETPAGES")
    await writer.drain()
    got = bytearray()
    while len(got) < pages * len(PAGE):
        chunk = await reader.read(1 << 16)
        if not chunk:
            break
        got += chunk
    writer.close()
    return bytes(got)


async def test_a_whole_fill_crosses_in_tls_and_ends_the_session_in_order(tmp_path: Path, ca: Pem) -> None:
    server = PageServer(512)
    relay, tunnel = await relay_and_tunnel(tmp_path, ca, await server.start())
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, 512), 10)
        assert await asyncio.wait_for(server.ended, 10) == "orderly"
    finally:
        await relay.stop()
        server.close()
    assert got == PAGE * 512
    assert tunnel.traffic.to_destination == 512 * len(PAGE) and tunnel.traffic.to_source == 8
    assert tunnel.error is None


async def test_a_source_that_breaks_mid_fill_is_seen_before_the_daemon_hears(tmp_path: Path, ca: Pem) -> None:
    server = PageServer(512, break_after=100)
    order: list[str] = []

    async def source_ended() -> None:
        order.append("paused")

    relay, tunnel = await relay_and_tunnel(tmp_path, ca, await server.start(), source_ended=source_ended)
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, 512), 10)
        order.append("daemon saw the end")
    finally:
        await relay.stop()
        server.close()
    assert len(got) < 512 * len(PAGE)
    assert order == ["paused", "daemon saw the end"]
    assert "ended before the daemon had every page" in (tunnel.error or "")


async def test_an_unknown_migration_or_a_stranger_is_refused(tmp_path: Path, ca: Pem) -> None:
    relay = PageRelay(tls=identity(tmp_path / "a", ca), lookup=lambda m, c: None, sent=lambda n: None)
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
        assert await asyncio.wait_for(daemon(tunnel.port, 1), 10) == b""
        assert "no pages served here for nope/app" in (tunnel.error or "")
        assert await asyncio.wait_for(daemon(stranger.port, 1), 10) == b""
        assert stranger.error is not None  # the TLS handshake failed: not this cluster's agent
    finally:
        await relay.stop()
