"""The source's post-copy dumps, while their memory is still only here.

A lazy dump (`runc checkpoint --lazy-pages`) writes every image but the pod's anonymous
memory and then serves that memory from the frozen tasks on one page-server connection.
The server listens in a network namespace of its own with nothing but loopback, so only
this agent (entering that namespace) can reach it. When the connection ends, the dump has
succeeded and ends the tasks: this class holds the connection and decides when.

- The destination's lazy-pages daemon reaches it through the page relay (`open`). When the
  daemon leaves, the relay hands the connection back at a message boundary (`settle`).
- Finalize (the destination has every page, past the commit): the connection is closed, the
  tasks end, runc's checkpoint exits (`release`).
- Rollback before the commit: the agent fetches the memory itself into the images, making
  them a full dump, and closes; the tasks end and the pod is restored from those images like
  a stop-and-copy rollback (`take_back`).

The connection must not die with the agent: its end would tell the dump to end the pod, even
before the commit. So a keeper process (`sleep`, in its own session) holds a copy of it.
The record on disk keeps runc's pid, the port, and the keeper's pid and descriptor; a
restarted agent takes the connection back from the keeper (pidfd_getfd), reads and drops
whatever answers were still coming to its predecessor, and goes on from that boundary:
taking the memory back, or letting the dump end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.page_server_wire import PageServerConnection, take_back

CLONE_NEWNET = 0x40000000
SYS_PIDFD_GETFD = 438  # the same number on x86-64 and arm64
CONNECT_SECONDS = 5.0
# A connection taken over from a dead agent is at a message boundary once it is this quiet.
QUIET_SECONDS = 0.5
# How long a relay may take to hand its connection back once asked to stop.
SETTLE_SECONDS = 10.0


class LazyDumpLost(Exception):
    """The memory of a lazy dump is no longer here to take back."""


def connect_in_netns_of(pid: int, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` in the network namespace of process `pid`, made
    from a thread of its own (setns moves only the calling thread)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as exc:
            result.append(exc)
            return
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the lazy dump's network namespace failed")
            # This thread ends here, so it never goes back to the agent's namespace.
            result.append(socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS))
        except BaseException as exc:  # - handed to the caller
            result.append(exc)
        finally:
            os.close(target)

    thread = threading.Thread(target=work, name=f"lazy-dump-connect-{pid}", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0] if result else OSError("the connecting thread ended without a result")
    if isinstance(outcome, BaseException):
        raise outcome
    outcome.settimeout(None)
    return outcome


def descriptor_of(pid: int, fd: int) -> socket.socket:
    """A copy of process `pid`'s socket `fd` (pidfd_getfd: Linux 5.6, root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of {pid}'s descriptor {fd} failed")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=got)


def keep(sock: socket.socket) -> int:
    """A process of its own session that holds a copy of `sock` until it is killed."""
    keeper = subprocess.Popen(
        ["sleep", "infinity"],
        pass_fds=(sock.fileno(),),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _KEEPERS[keeper.pid] = keeper
    return keeper.pid


# The keepers this agent started, to reap once stopped.
_KEEPERS: dict[int, subprocess.Popen[bytes]] = {}


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    if _alive(pid, "sleep"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    keeper = _KEEPERS.pop(pid, None)
    if keeper is not None:
        keeper.wait()


def _alive(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@dataclass
class LazyCheckpoint:
    """A lazy dump that has written its images and serves the memory: runc's pid and the
    port its page server listens on, in runc's network namespace."""

    pid: int
    port: int
    image_dir: Path
    wait: Callable[[float], int | None] = field(default=lambda _t: None, repr=False)


@dataclass
class _Dump:
    uid: str
    name: str
    pid: int
    port: int
    image_dir: Path
    wait: Callable[[float], int | None] | None = None
    conn: PageServerConnection | None = None
    # waiting -> relaying -> parked -> done; orphaned: an earlier agent's connection, kept.
    state: str = "waiting"
    keeper: tuple[int, int] | None = None  # (pid, descriptor)
    cut: Callable[[], None] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class LazyDumps:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._writing = threading.Lock()
        self._dumps: dict[tuple[str, str], _Dump] = {}

    # ----- the record -----

    def _record(self, uid: str) -> dict[str, dict[str, object]]:
        try:
            found = json.loads(self.layout.lazy_record(uid).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def add(self, uid: str, name: str, dump: LazyCheckpoint) -> None:
        with self._writing:
            record = self._record(uid)
            record[name] = {"pid": dump.pid, "port": dump.port, "images": str(dump.image_dir)}
            self.layout.lazy_record(uid).write_text(json.dumps(record))
            self._dumps[(uid, name)] = _Dump(uid, name, dump.pid, dump.port, dump.image_dir, dump.wait)

    def _kept(self, dump: _Dump, keeper: tuple[int, int] | None) -> None:
        with self._writing:
            record = self._record(dump.uid)
            if dump.name in record:
                record[dump.name]["keeper"] = list(keeper) if keeper else None
                self.layout.lazy_record(dump.uid).write_text(json.dumps(record))
            dump.keeper = keeper

    def names(self, uid: str) -> list[str]:
        return sorted(self._record(uid))

    def is_lazy(self, uid: str) -> bool:
        return self.layout.lazy_record(uid).exists()

    def _dump(self, uid: str, name: str) -> _Dump | None:
        dump = self._dumps.get((uid, name))
        if dump is None:
            entry = self._record(uid).get(name)
            if not isinstance(entry, dict):
                return None
            # An earlier agent's dump: its connection is with the keeper, if it was made.
            dump = _Dump(
                uid, name, int(str(entry["pid"])), int(str(entry["port"])), Path(str(entry["images"]))
            )
            kept = entry.get("keeper")
            if isinstance(kept, list) and _alive(int(kept[0]), "sleep"):
                dump.keeper, dump.state = (int(kept[0]), int(kept[1])), "orphaned"
            self._dumps[(uid, name)] = dump
        return dump

    def running(self, uid: str, name: str) -> bool:
        dump = self._dump(uid, name)
        return dump is not None and _alive(dump.pid, "checkpoint")

    # ----- the relay's side -----

    async def open(self, uid: str, name: str, cut: Callable[[], None]) -> PageServerConnection | None:
        """The page server's connection for the destination's daemon (once); `cut` ends that
        relay when the memory is taken back."""
        dump = self._dump(uid, name)
        if dump is None or dump.state != "waiting":
            return None
        conn = await self._connect(dump)
        dump.conn, dump.state, dump.cut = conn, "relaying", cut
        dump.settled.clear()
        return conn

    def settle(self, uid: str, name: str, conn: PageServerConnection | None) -> None:
        """The relay is done: `conn` back at a message boundary, or None if the page server
        broke off (its dump failed)."""
        dump = self._dumps.get((uid, name))
        if dump is None:
            if conn is not None:
                conn.close()
            return
        dump.conn, dump.state, dump.cut = conn, ("parked" if conn is not None else "lost"), None
        dump.settled.set()

    async def _connect(self, dump: _Dump) -> PageServerConnection:
        if not _alive(dump.pid, "checkpoint"):
            dump.state = "lost"
            raise LazyDumpLost("its lazy dump has ended")
        try:
            sock = await asyncio.to_thread(connect_in_netns_of, dump.pid, dump.port)
            self._kept(dump, (keep(sock), sock.fileno()))
        except OSError as exc:
            dump.state = "lost"
            raise LazyDumpLost(f"its page server cannot be reached: {exc}") from None
        return PageServerConnection(sock)

    async def _adopt(self, dump: _Dump) -> PageServerConnection:
        """An earlier agent's connection, from its keeper, at a message boundary."""
        assert dump.keeper is not None
        try:
            conn = PageServerConnection(descriptor_of(*dump.keeper))
        except OSError as exc:
            dump.state = "lost"
            raise LazyDumpLost(f"its connection cannot be taken from its keeper: {exc}") from None
        # No more asks were made after that agent died: what still comes answers them.
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(conn.recv(1 << 20), QUIET_SECONDS)
        return conn

    async def _parked(self, dump: _Dump) -> PageServerConnection:
        """The connection, with no relay on it (a relay still on it is cut)."""
        if dump.state == "orphaned":
            dump.conn, dump.state = await self._adopt(dump), "parked"
        if dump.state == "waiting":
            dump.conn, dump.state = await self._connect(dump), "parked"
        if dump.state == "relaying":
            if dump.cut is not None:
                dump.cut()
            await asyncio.wait_for(dump.settled.wait(), SETTLE_SECONDS)
        if dump.state != "parked" or dump.conn is None:
            raise LazyDumpLost("its page server broke off")
        return dump.conn

    # ----- rollback and finalize -----

    async def take_back(self, uid: str, name: str) -> int:
        """Rollback before the commit: the memory fetched into the images (a full dump now),
        then the dump let end. Returns the bytes fetched."""
        dump = self._dump(uid, name)
        if dump is None:
            return 0
        if dump.state == "done":
            return 0
        try:
            conn = await self._parked(dump)
        except (LazyDumpLost, TimeoutError) as exc:
            raise LazyDumpLost(f"the pod's memory was only in its lazy dump, and {exc}") from None
        fetched = await take_back(conn, dump.image_dir)
        await self._end(dump, conn)
        return fetched

    async def release(self, uid: str, timeout: float) -> None:
        """Finalize: every dump of the migration let end (its tasks run on the destination)."""
        for name in self.names(uid):
            dump = self._dump(uid, name)
            if dump is None or dump.state in ("done", "lost"):
                continue
            if dump.state == "relaying":
                # The destination's daemon has every page; its relay is finishing.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dump.settled.wait(), timeout)
            if dump.state == "relaying" and dump.cut is not None:
                dump.cut()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dump.settled.wait(), SETTLE_SECONDS)
            conn = dump.conn
            if dump.state == "orphaned":
                with contextlib.suppress(LazyDumpLost):
                    conn = await self._adopt(dump)
            if conn is None and dump.state == "waiting":
                with contextlib.suppress(LazyDumpLost):
                    conn = await self._connect(dump)
            if conn is not None:
                await self._end(dump, conn)

    async def _end(self, dump: _Dump, conn: PageServerConnection) -> None:
        await conn.end()
        _stop(dump.keeper[0] if dump.keeper else None)  # its copy too: CRIU waits for the end
        dump.conn, dump.state = None, "done"
        deadline = time.monotonic() + 30
        # runc deletes the container once CRIU's dump ends: wait for it, so what follows
        # (a restore under the same id, the source's clean-up) finds it gone.
        if dump.wait is not None:
            await asyncio.to_thread(dump.wait, 30)
        while _alive(dump.pid, "checkpoint") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def forget(self, uid: str) -> None:
        with self._writing:
            for key in [k for k in self._dumps if k[0] == uid]:
                dump = self._dumps.pop(key)
                if dump.conn is not None:
                    dump.conn.close()
                _stop(dump.keeper[0] if dump.keeper else None)
            self.layout.lazy_record(uid).unlink(missing_ok=True)
