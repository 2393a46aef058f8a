"""Post-copy page traffic between agents, inside mutual TLS.

CRIU's lazy dump serves the pod's memory from its frozen tasks (on the source) to the
lazy-pages daemon (on the destination) over plain TCP, so neither is exposed to the
network: the dump listens in a network namespace of its own (LazyDumps connects into it),
the daemon connects to a tunnel on 127.0.0.1, and the two agents carry the bytes between
them in TLS 1.3 between certificates the cluster's agent CA signed, as they do the images
(transfer.py). Memory never crosses the network in the clear.

    lazy-pages daemon -> 127.0.0.1:tunnel (destination agent)
        == TLS ==> relay (source agent) -> the lazy dump's page server (CRIU, frozen tasks)

After the handshake the destination says {"migration", "container", "protocol"}; the source
answers {"ready": true} if it serves that container's pages, else {"error": why}. Then the
source relays CRIU's page-server protocol message by message (page_server_wire), so the
connection to the dump stays whole whatever the destination does: the dump ends the pod
when that connection ends, and only the source's finalize or rollback may end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from services.checkpoint_agent.page_prefetch import Prefetch
from services.checkpoint_agent.page_server_wire import (
    CLOSES,
    HEADER,
    PS_IOV_GET,
    STATUS,
    PageServerConnection,
    PageServerGone,
    answered_pages,
    command_of,
)
from services.checkpoint_agent.pagemap import PAGE_SIZE
from services.checkpoint_agent.tls import AGENT_NAME, AgentTls

PROTOCOL = 1
CHUNK = 1 << 20
HANDSHAKE_SECONDS = 10.0
# After the source's last answer, how long the daemon may take to exit having every page.
DAEMON_EXIT_SECONDS = 5.0

log = logging.getLogger(__name__)


class LazyPageSource(Protocol):
    """Where the source's relay finds a container's page server (LazyDumps)."""

    async def open(self, uid: str, name: str, cut: Callable[[], None]) -> PageServerConnection | None: ...

    def settle(self, uid: str, name: str, conn: PageServerConnection | None) -> None: ...


class PageRelayError(Exception):
    pass


@dataclass
class Traffic:
    """Bytes carried, each way, for the step's details and the agent's metrics."""

    to_destination: int = 0
    to_source: int = 0


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]
) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        count(len(data))
        await writer.drain()


async def _first_to_end(*coroutines: Awaitable[None]) -> int:
    """Run the copies until one ends; the index of the one that did (the others cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return tasks.index(next(iter(done)))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class PageRelay:
    """The source's end: one TLS listener per agent; each connection is one container's pages."""

    def __init__(self, *, tls: AgentTls | None, pages: LazyPageSource, sent: Callable[[int], None]) -> None:
        self.tls, self.pages, self.sent = tls, pages, sent
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        if self.tls is None:
            # Without an identity this agent serves no pages (and refuses migrations).
            raise PageRelayError("no agent TLS identity: the page relay does not listen")
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.tls.server_context())
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = orjson.loads(await asyncio.wait_for(reader.readline(), HANDSHAKE_SECONDS) or b"null")
            if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
                raise PageRelayError(f"the peer speaks page protocol {hello!r}, this agent {PROTOCOL}")
            migration, container = str(hello.get("migration")), str(hello.get("container"))
            conn = await self.pages.open(migration, container, cut=writer.transport.abort)
            if conn is None:
                raise PageRelayError(f"no pages served here for {migration}/{container}")
        except Exception as exc:  # - the peer hears why, the relay goes on
            log.warning("page relay refused a connection", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                writer.write(orjson.dumps({"error": str(exc)}) + b"\n")
                await writer.drain()
            writer.close()
            return
        writer.write(b'{"ready": true}\n')
        await writer.drain()
        traffic = Traffic()
        healthy = await _relay(reader, writer, conn, traffic)
        writer.close()
        self.pages.settle(migration, container, conn if healthy else None)
        if not healthy:
            conn.close()
        self.sent(traffic.to_destination)
        log.info(
            "pages served",
            extra={"migration": migration, "container": container, "bytes": traffic.to_destination},
        )


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: PageServerConnection,
    traffic: Traffic,
) -> bool:
    """Carry the daemon's requests to the page server and its answers back, message by
    message, until the daemon closes or goes. The daemon's close is answered here, not
    passed on: the server would end its dump, and with it the pod here, and only the
    finalize may do that. Answers still owed when the daemon went are read and dropped, so
    the connection is left at a message boundary. False if the page server broke off."""
    owed: asyncio.Queue[str | None] = asyncio.Queue()
    daemon_there = True

    async def requests() -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                command = command_of(header)
                if command in CLOSES:
                    owed.put_nowait("close")
                    return
                if command != PS_IOV_GET:
                    raise PageRelayError(f"the lazy-pages daemon sent command {command:#x}")
                await conn.send(header)
                traffic.to_source += len(header)
                owed.put_nowait("pages")
        except (asyncio.IncompleteReadError, OSError, PageRelayError):
            pass
        finally:
            owed.put_nowait(None)

    async def to_daemon(data: bytes) -> None:
        nonlocal daemon_there
        if not daemon_there:
            return
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError):
            daemon_there = False

    async def answers() -> None:
        while (item := await owed.get()) is not None:
            if item == "close":
                await to_daemon(STATUS.pack(0))
                continue
            header = await conn.recv_exactly(HEADER.size)
            await to_daemon(header)
            left = answered_pages(header) * PAGE_SIZE
            while left:
                data = await conn.recv(min(CHUNK, left))
                left -= len(data)
                traffic.to_destination += len(data)
                await to_daemon(data)

    asking = asyncio.ensure_future(requests())
    try:
        await answers()
    except (PageServerGone, OSError):
        writer.transport.abort()
        return False
    finally:
        await asyncio.gather(asking, return_exceptions=True)
    return True


class PageTunnel:
    """The destination's end for one container: a listener on 127.0.0.1 for its lazy-pages
    daemon; the daemon's connection is carried to the source's relay."""

    def __init__(
        self,
        *,
        address: str,
        migration: str,
        container: str,
        tls: AgentTls,
        source_ended: Callable[[], Awaitable[None]] | None = None,
        received: Callable[[], None] | None = None,
        memory: list[tuple[int, int, int]] | None = None,
    ) -> None:
        self.address, self.migration, self.container, self.tls = address, migration, container, tls
        # The lazily restorable memory [(pid, vaddr, pages)...]: with it, the tunnel fetches
        # it all ahead of the daemon (page_prefetch); without, it passes the daemon's asks on.
        self.memory = memory
        # Called after each chunk of pages that reached the destination (the fill's progress).
        self.received = received
        # Run before the daemon hears that the source went away: the pod is paused then, so
        # it never runs on pages the daemon will not fill (closing userfaultfd zero-fills).
        self.source_ended = source_ended
        # The daemon's exit status, once it exited (PageFills' watcher says so).
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.traffic = Traffic()
        self.error: str | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def open(self) -> PageTunnel:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def daemon_exited(self, code: int) -> None:
        if not self.exit_code.done():
            self.exit_code.set_result(code)

    async def _daemon_finished(self) -> bool:
        try:
            return await asyncio.wait_for(asyncio.shield(self.exit_code), DAEMON_EXIT_SECONDS) == 0
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.close()  # one daemon, one connection
        try:
            remote_reader, remote = await self._connect()
        except (PageRelayError, OSError, TimeoutError) as exc:
            self.error = str(exc)
            log.warning("page tunnel to the source failed", extra={"error": self.error})
            writer.close()
            return

        def to_destination(n: int) -> None:
            self.traffic.to_destination += n
            if self.received is not None:
                self.received()

        def to_source(n: int) -> None:
            self.traffic.to_source += n

        if self.memory:
            prefetch = Prefetch(self.memory, received=to_destination, source_ended=self.source_ended)
            try:
                if not await prefetch.run(remote_reader, remote, reader, writer):
                    self.error = self.error or prefetch.error or prefetch.failed
            finally:
                writer.close()
                remote.close()
            log.info(
                "page fill through the tunnel ended",
                extra={
                    "migration": self.migration,
                    "container": self.container,
                    "bytes": self.traffic.to_destination,
                    "daemon_asks": prefetch.asks,
                    "pages_asked": prefetch.pages_asked,
                    "asks_ready_at_once": prefetch.ready_when_asked,
                    "error": self.error,
                },
            )
            return

        try:
            first = await _first_to_end(
                _copy(remote_reader, writer, to_destination), _copy(reader, remote, to_source)
            )
            if first == 0:
                # CRIU's page server hangs up right after its last answer (it serves a socket
                # pair, so it does not wait for the daemon): the daemon then exits 0 on its
                # own. Meanwhile its socket stays open, so a daemon still missing pages keeps
                # waiting for them (nothing is zero-filled); only then is the pod paused.
                finished = await self._daemon_finished()
                if not finished and self.source_ended is not None:
                    await self.source_ended()
                if not finished:
                    self.error = (
                        self.error or "the source's page stream ended before the daemon had every page"
                    )
        except OSError as exc:
            self.error = str(exc)
        finally:
            writer.close()
            remote.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.address.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host.strip("[]"), int(port), ssl=self.tls.client_context(), server_hostname=AGENT_NAME
            ),
            HANDSHAKE_SECONDS,
        )
        hello = {"migration": self.migration, "container": self.container, "protocol": PROTOCOL}
        writer.write(orjson.dumps(hello) + b"\n")
        await writer.drain()
        answer = orjson.loads(await asyncio.wait_for(reader.readline(), HANDSHAKE_SECONDS) or b"null")
        if not isinstance(answer, dict) or not answer.get("ready"):
            writer.close()
            why = answer.get("error") if isinstance(answer, dict) else "no answer"
            raise PageRelayError(f"the source's page relay at {self.address} refused: {why}")
        return reader, writer
