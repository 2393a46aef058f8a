"""The page relay and tunnel with stand-ins for CRIU's page server and lazy-pages daemon:
plain TCP on 127.0.0.1 at both ends, mutual TLS between the agents."""

from __future__ import annotations

import asyncio
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


async def page_server(pages: int, *, break_after: int | None = None) -> tuple[asyncio.Server, int]:
    """Answers each 8-byte request with `pages` pages; with `break_after`, hangs up mid-way."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        for n in range(pages):
            if break_after is not None and n == break_after:
                writer.transport.abort()
                return
            writer.write(PAGE)
            await writer.drain()
        await reader.read()  # the daemon closes when it has everything
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


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


async def test_pages_cross_in_tls_and_arrive_whole(tmp_path: Path, ca: Pem) -> None:
    server, server_port = await page_server(512)
    sent: list[int] = []
    relay = PageRelay(
        tls=identity(tmp_path / "a", ca),
        lookup=lambda m, c: server_port if (m, c) == ("m1", "app") else None,
        sent=sent.append,
    )
    relay_port = await relay.start("127.0.0.1", 0)
    ended: list[bool] = []

    async def source_ended() -> None:
        ended.append(True)

    tunnel = await PageTunnel(
        address=f"127.0.0.1:{relay_port}",
        migration="m1",
        container="app",
        tls=identity(tmp_path / "b", ca),
        source_ended=source_ended,
    ).open()
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, 512), 10)
        await asyncio.wait_for(tunnel.traffic.done.wait(), 5)
    finally:
        await relay.stop()
        server.close()
    assert got == PAGE * 512
    assert tunnel.traffic.to_destination == 512 * len(PAGE) and tunnel.traffic.to_source == 8
    assert tunnel.error is None and ended == []  # the daemon ended it: a whole fill


async def test_a_source_that_breaks_mid_fill_is_seen_before_the_daemon_hears(tmp_path: Path, ca: Pem) -> None:
    server, server_port = await page_server(512, break_after=100)
    relay = PageRelay(tls=identity(tmp_path / "a", ca), lookup=lambda m, c: server_port, sent=lambda n: None)
    relay_port = await relay.start("127.0.0.1", 0)
    order: list[str] = []

    async def source_ended() -> None:
        order.append("paused")

    tunnel = await PageTunnel(
        address=f"127.0.0.1:{relay_port}",
        migration="m1",
        container="app",
        tls=identity(tmp_path / "b", ca),
        source_ended=source_ended,
    ).open()
    try:
        got = await asyncio.wait_for(daemon(tunnel.port, 512), 10)
        order.append("daemon saw the end")
    finally:
        await relay.stop()
        server.close()
    assert len(got) < 512 * len(PAGE)
    assert order == ["paused", "daemon saw the end"]


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
