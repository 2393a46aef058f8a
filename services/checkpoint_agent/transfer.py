"""Agent-to-agent transfer of checkpoint images, inside mutual TLS.

No shared filesystem: the source agent streams the files of an image directory straight
to the destination agent over TCP, in TLS 1.3 between certificates the cluster's agent CA
signed (tls.py): nothing of the pod's memory crosses the network in the clear, and only an
agent of this cluster can send or receive. A plain connection is refused at the handshake.

After the handshake the sender says {"migration", "protocol"}; the receiver answers
{"ready": true} if it expects that migration, else why not. Then frames (TLS keeps them
whole and in order):

    FILE  name      then DATA chunks (and SKIP lengths: holes), then DONE
    END   manifest {name: size}

A SKIP leaves a hole of that many bytes: post-copy sends the pages image without the pages
that come later on demand (pagemap.py), at the size the restore expects.

A dump's memory can travel while CRIU still writes it (`Growing`): the first pages image is
sent as it grows, and the rest once the dump has ended. The freeze then holds the larger of
the dump and the transfer, not their sum.

The receiver writes into a staging directory, checks the sizes against the manifest, and
only then renames the staging directory into place. Any failure — an unknown certificate, a
flipped bit, a dropped connection, a timeout — leaves nothing behind and raises
TransferError with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from services.checkpoint_agent.tls import AGENT_NAME, AgentTls

CHUNK = 4 << 20
# Hears the bytes a transfer has sent so far.
Progress = Callable[[int], None]
# 4: holes (SKIP); 3: inside mutual TLS (2: HMAC-SHA256 frames, 1: keyed BLAKE2b). Both
# agents must speak it.
PROTOCOL = 4
_HEADER = struct.Struct("!BI")  # frame type, payload length
FILE, DATA, DONE, END, ERROR, SKIP = 1, 2, 3, 4, 5, 6
_SKIP = struct.Struct("!Q")
# {relative file name: [(offset, length)...]}: byte ranges not to send.
Holes = Mapping[str, list[tuple[int, int]]]
MAX_FRAME = CHUNK + 4096


class TransferError(Exception):
    pass


class Growing:
    """Files still being written while a transfer sends them: the dump's memory pages.

    The sender follows the first file matching `pattern` as CRIU writes it (sequentially,
    never going back) and sends it whole once the writer has `finish`ed; the other files
    go after that. A writer that `fail`s ends the transfer: the receiver keeps nothing."""

    # How often the sender looks for more bytes when it has caught up with the writer.
    POLL_SECONDS = 0.002
    # While the writer runs, what the sender waits to have before it reads.
    BATCH = 1 << 20

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._ended = threading.Event()
        self.failed = False
        # Bytes of the followed file sent before the writer finished.
        self.early_bytes = 0
        self.finished_at = 0.0

    def finish(self) -> None:
        self.finished_at = time.perf_counter()
        self._ended.set()

    def fail(self) -> None:
        self.failed = True
        self._ended.set()

    def ended(self) -> bool:
        """Whether the writer is done; raises if it failed."""
        done = self._ended.is_set()
        if done and self.failed:
            raise TransferError("the dump failed: its images are incomplete")
        return done

    def wait(self, seconds: float) -> bool:
        self._ended.wait(seconds)
        return self.ended()


@dataclass(frozen=True)
class TransferStats:
    files: int
    bytes: int
    seconds: float
    # Of `bytes`, how many were holes (not sent).
    skipped: int = 0
    # When the receiver had it all (time.perf_counter()).
    ended_at: float = 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / 2**20 / self.seconds if self.seconds else 0.0


def _send_frame(sock: socket.socket, kind: int, payload: bytes | memoryview) -> None:
    """One frame: header then payload, written without joining them (no copy)."""
    sock.sendall(_HEADER.pack(kind, len(payload)))
    if payload:
        sock.sendall(payload)


def _receive_frame(sock: socket.socket, buffer: memoryview) -> tuple[int, memoryview]:
    """One frame into `buffer` (reused: the payload is valid until the next call)."""
    kind, length = _HEADER.unpack(bytes(_recv_exactly(sock, buffer[: _HEADER.size])))
    if length > MAX_FRAME:
        raise TransferError(f"frame of {length} bytes is larger than allowed")
    return kind, _recv_exactly(sock, buffer[:length])


def _recv_exactly(sock: socket.socket, view: memoryview) -> memoryview:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise asyncio.IncompleteReadError(bytes(view[:got]), len(view))
        got += n
    return view


def _parse_line(raw: bytes) -> dict:
    if not raw:
        raise TransferError("the peer closed the connection during the handshake")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TransferError("malformed handshake") from None
    if not isinstance(value, dict):
        raise TransferError("malformed handshake")
    return value


def _read_line(sock: socket.socket, limit: int = 65536) -> dict:
    """A handshake or verdict line, read byte by byte: nothing after it is consumed."""
    raw = bytearray()
    while not raw.endswith(b"\n") and len(raw) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        raw += byte
    return _parse_line(bytes(raw))


# The bytes move in worker threads over blocking sockets: TLS, socket and file calls all
# release the GIL, so a transfer runs at C speed while the event loop stays free.


class Channel:
    """A connection to the receiver, TLS and handshake done: open before the pod is frozen,
    so an unreachable or unwilling destination fails the step while the pod still runs."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock

    async def send(
        self,
        source: Path,
        *,
        stall_seconds: float = 600,
        holes: Holes | None = None,
        progress: Progress | None = None,
        growing: Growing | None = None,
    ) -> TransferStats:
        """Stream every regular file under `source` (subdirectories included), leaving out
        `holes`; with `growing`, starting while they are still written. A peer that takes
        nothing for `stall_seconds` fails the transfer (a dead link is not waited on).
        `progress` hears the bytes sent so far, from the worker."""
        self.sock.settimeout(stall_seconds)
        try:
            return await asyncio.to_thread(
                _send,
                self.sock,
                source,
                time.perf_counter(),
                holes or {},
                progress or _no_progress,
                growing,
            )
        finally:
            # Also what stops the worker when the step is cancelled: its socket calls fail.
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


async def open_channel(
    host: str, port: int, *, migration: str, tls: AgentTls, connect_seconds: float = 30
) -> Channel:
    """Connect, handshake in TLS, say which migration: the receiver is ready for its images."""
    try:
        connect = functools.partial(socket.create_connection, (host, port), timeout=connect_seconds)
        raw = await asyncio.wait_for(asyncio.to_thread(connect), connect_seconds + 1)
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"cannot reach the receiver at {host}:{port}: {exc or 'timed out'}") from None
    try:
        sock = await asyncio.to_thread(_handshake, raw, tls, migration)
    except BaseException:
        raw.close()
        raise
    return Channel(sock)


async def send_directory(
    host: str, port: int, source: Path, *, migration: str, tls: AgentTls, timeout: float = 600
) -> TransferStats:
    """Open a channel and stream `source` through it."""
    channel = await open_channel(host, port, migration=migration, tls=tls, connect_seconds=min(30, timeout))
    return await channel.send(source, stall_seconds=timeout)


def _handshake(raw: socket.socket, tls: AgentTls, migration: str) -> ssl.SSLSocket:
    raw.settimeout(30)
    try:
        sock = tls.client_context().wrap_socket(raw, server_hostname=AGENT_NAME)
    except (ssl.SSLError, OSError) as exc:
        raise TransferError(
            f"TLS with the receiver failed (is it an agent of this cluster?): {exc}"
        ) from None
    try:
        sock.sendall(orjson.dumps({"migration": migration, "protocol": PROTOCOL}) + b"\n")
        answer = _read_line(sock)
    except OSError as exc:
        sock.close()
        raise TransferError(f"the receiver did not answer the handshake: {exc}") from None
    except TransferError:
        sock.close()
        raise
    if "error" in answer:
        sock.close()
        raise TransferError(f"the receiver refused: {answer['error']}")
    return sock


def _no_progress(_sent: int) -> None:
    return None


def sending_size(source: Path, holes: Holes) -> int:
    """The bytes a transfer of `source` without `holes` carries (its files' data)."""
    size = sum(p.stat().st_size for p in _regular_files(source))
    return size - sum(length for spans in holes.values() for _start, length in spans)


def _send(
    sock: ssl.SSLSocket,
    source: Path,
    started: float,
    holes: Holes,
    progress: Progress,
    growing: Growing | None = None,
) -> TransferStats:
    with sock:
        try:
            manifest, total, skipped = _stream_files(sock, source, holes, progress, growing)
        except (ConnectionError, OSError) as exc:
            # The receiver may have said why before hanging up.
            try:
                sock.settimeout(2)
                verdict = _read_line(sock)
            except (TransferError, OSError):
                verdict = {}
            reason = verdict.get("error") or f"connection lost ({exc or 'timed out'})"
            raise TransferError(f"the receiver rejected the transfer: {reason}") from None
        try:
            verdict = _read_line(sock)
        except OSError as exc:
            raise TransferError(f"the receiver rejected the transfer: connection lost ({exc})") from None
    if not verdict.get("ok"):
        raise TransferError(f"the receiver rejected the transfer: {verdict.get('error')}")
    ended = time.perf_counter()
    return TransferStats(len(manifest), total, ended - started, skipped, ended)


def _stream_files(
    sock: socket.socket, source: Path, holes: Holes, progress: Progress, growing: Growing | None = None
) -> tuple[dict[str, int], int, int]:
    manifest: dict[str, int] = {}
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    skipped = 0
    sent = [0]

    def count(n: int) -> None:
        sent[0] += n
        progress(sent[0])

    if growing is not None:
        followed = _first_growing(source, growing)
        if followed is not None:
            name = followed.relative_to(source).as_posix()
            _send_frame(sock, FILE, orjson.dumps({"name": name}))
            manifest[name] = _send_growing(sock, followed, view, growing, count)
            _send_frame(sock, DONE, b"")
        while not growing.wait(1.0):
            pass
    for path in _regular_files(source):
        name = path.relative_to(source).as_posix()
        if name in manifest:
            continue
        _send_frame(sock, FILE, orjson.dumps({"name": name}))
        size = 0
        with path.open("rb", buffering=0) as handle:
            for start, length in sorted(holes.get(name, [])):
                size += _send_range(sock, handle, view, start - size, count)
                _send_frame(sock, SKIP, _SKIP.pack(length))
                handle.seek(length, os.SEEK_CUR)
                size += length
                skipped += length
            size += _send_range(sock, handle, view, None, count)
        _send_frame(sock, DONE, b"")
        manifest[name] = size
    _send_frame(sock, END, orjson.dumps(manifest))
    return manifest, sum(manifest.values()), skipped


def _first_growing(source: Path, growing: Growing) -> Path | None:
    """The first file the writer makes that matches the pattern (None: it ended first)."""
    while True:
        ended = growing.ended()
        found = sorted(source.glob(growing.pattern))
        if found:
            return found[0]
        if ended:
            return None
        growing.wait(Growing.POLL_SECONDS)


def _send_growing(
    sock: socket.socket, path: Path, view: memoryview, growing: Growing, count: Progress
) -> int:
    """Send `path` as the writer appends to it, and its last bytes once the writer ended."""
    size = 0
    with path.open("rb", buffering=0) as handle:
        while True:
            # Looked at before reading: what was written before the end is all read below.
            ended = growing.ended()
            if not ended and os.fstat(handle.fileno()).st_size - size < Growing.BATCH:
                # Close behind the writer: wait for a whole frame's worth, not a trickle of
                # small frames (each a syscall and a TLS record the dump's CPUs pay for).
                growing.wait(Growing.POLL_SECONDS)
                continue
            n = handle.readinto(view)
            if n:
                _send_frame(sock, DATA, view[:n])
                size += n
                count(n)
                if not ended:
                    growing.early_bytes = size
                continue
            if ended:
                return size
            growing.wait(Growing.POLL_SECONDS)


def _regular_files(source: Path) -> list[Path]:
    """Every regular file under `source`, not through symlinks: a pre-copy dump's `parent`
    link points at an earlier round, which travelled on its own."""
    found: list[Path] = []
    for top, _dirs, files in os.walk(source):
        found.extend(p for p in (Path(top, f) for f in files) if p.is_file() and not p.is_symlink())
    return sorted(found)


def _send_range(
    sock: socket.socket, handle: BinaryIO, view: memoryview, length: int | None, count: Progress
) -> int:
    """Send `length` bytes from the file's position (None: to its end); the count sent."""
    sent = 0
    while length is None or sent < length:
        want = len(view) if length is None else min(len(view), length - sent)
        n = handle.readinto(view[:want])  # type: ignore[attr-defined]  # a raw FileIO
        if not n:
            break
        sent += n
        _send_frame(sock, DATA, view[:n])
        count(n)
    return sent


def receive_connection(
    raw: socket.socket, *, tls: AgentTls, destination_for: Mapping[str, Path], timeout: float = 600
) -> tuple[str, TransferStats]:
    """Serve one incoming connection (blocking: run it in a worker thread). `destination_for`
    maps the migrations this agent expects to the directory their images go to (replaced if
    an earlier transfer left one)."""
    started = time.perf_counter()
    raw.settimeout(30)
    try:
        sock = tls.server_context().wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as exc:
        raise TransferError(f"refused a connection without this cluster's agent certificate: {exc}") from None
    with sock:
        hello = _read_line(sock)
        migration = str(hello.get("migration", ""))
        protocol = hello.get("protocol", 1)
        if protocol != PROTOCOL:
            reason = (
                f"the sender speaks transfer protocol {protocol}, this agent {PROTOCOL}: "
                "run the same CLM version on every node"
            )
            sock.sendall(orjson.dumps({"error": reason}) + b"\n")
            raise TransferError(reason)
        target = destination_for.get(migration)
        if target is None:
            sock.sendall(orjson.dumps({"error": f"no transfer expected for migration {migration!r}"}) + b"\n")
            raise TransferError(f"unexpected transfer for migration {migration!r}")
        sock.settimeout(timeout)
        sock.sendall(b'{"ready": true}\n')
        total, files = _receive(sock, migration, target, destination_for)
    return migration, TransferStats(files, total, time.perf_counter() - started)


def _settle(destination_for: Mapping[str, Path], migration: str, staging: Path, target: Path) -> None:
    """The received images into their place. A destination that can give a migration up
    while its images arrive (the agent's ExpectedTransfers: an abort) says whether it still
    wants them; a fixed mapping always does."""
    settle = getattr(destination_for, "settle", None)
    if settle is not None:
        if not settle(migration, staging, target):
            raise TransferError(f"migration {migration} was given up on this node while its images arrived")
        return
    if target.exists():
        # A repeated dump re-sends the whole image; the receiver only offers targets that
        # nothing has been restored from yet.
        shutil.rmtree(target)
    staging.rename(target)


def _receive(
    sock: socket.socket, migration: str, target: Path, destination_for: Mapping[str, Path]
) -> tuple[int, int]:
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        received, total = _receive_files(sock, staging)
        _settle(destination_for, migration, staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = str(exc) if isinstance(exc, TransferError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            sock.sendall(orjson.dumps({"ok": False, "error": reason}) + b"\n")
        if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
            raise TransferError(f"transfer for {migration} failed: the sender went away mid-stream") from None
        if isinstance(exc, TimeoutError):
            raise TransferError(f"transfer for {migration} failed: the sender went quiet") from None
        if isinstance(exc, ssl.SSLError):
            raise TransferError(f"transfer for {migration} failed: the TLS stream broke ({exc})") from None
        raise TransferError(f"transfer for {migration} failed: {reason}") from exc
    sock.sendall(b'{"ok": true}\n')
    return total, len(received)


def _receive_files(sock: socket.socket, staging: Path) -> tuple[dict[str, int], int]:
    """Read frames into `staging` until END; check the sender's manifest."""
    received: dict[str, int] = {}
    current = None
    buffer = memoryview(bytearray(MAX_FRAME))
    while True:
        kind, payload = _receive_frame(sock, buffer)
        if kind == FILE:
            name = str(orjson.loads(bytes(payload))["name"])
            parts = name.split("/")
            if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise TransferError(f"refusing file name {name!r}")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            current = (name, (staging / name).open("wb", buffering=0))
        elif kind == DATA and current:
            current[1].write(payload)
        elif kind == SKIP and current:
            (length,) = _SKIP.unpack(bytes(payload))
            current[1].seek(length, os.SEEK_CUR)
        elif kind == DONE and current:
            name, handle = current
            handle.truncate()  # a hole at the end still counts in the size
            handle.close()
            received[name] = (staging / name).stat().st_size
            current = None
        elif kind == END:
            if orjson.loads(bytes(payload)) != received:
                raise TransferError("the files received do not match the sender's manifest")
            return received, sum(received.values())
        else:
            raise TransferError(f"unexpected frame type {kind}")
