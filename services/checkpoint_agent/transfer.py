"""Agent-to-agent transfer of checkpoint images: authenticated and integrity-checked.

No shared filesystem: the source agent streams the files of an image directory straight
to the destination agent over TCP.

Handshake: the sender opens with {"migration", "nonce"}; the receiver answers with its own
nonce. Both derive a session key HMAC(secret, migration | both nonces); the cluster-wide
agent secret itself never crosses the wire, and fresh nonces make every session's key
unique (a recorded stream cannot be replayed). Then frames, each followed by a keyed
BLAKE2b MAC of (sequence number, frame):

    FILE  name      then DATA chunks, then DONE
    END   manifest {name: size}

The receiver writes into a staging directory, checks every MAC as it arrives (so nothing
is altered, dropped, reordered or replayed) and the sizes against the manifest, and only
then renames the staging directory into place. Any failure — wrong secret, a flipped bit,
a dropped connection, a timeout — leaves nothing behind and raises TransferError with the
reason. (Integrity and authentication, not secrecy: TLS between agents is still to come.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

CHUNK = 1 << 20
MAC_SIZE = 32
_HEADER = struct.Struct("!BI")  # frame type, payload length
FILE, DATA, DONE, END, ERROR = 1, 2, 3, 4, 5
MAX_FRAME = CHUNK + 4096


class TransferError(Exception):
    pass


@dataclass(frozen=True)
class TransferStats:
    files: int
    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / 2**20 / self.seconds if self.seconds else 0.0


def _session_key(secret: bytes, migration: str, sender_nonce: bytes, receiver_nonce: bytes) -> bytes:
    return hmac.new(
        secret,
        b"clm-transfer-v1|" + migration.encode() + b"|" + sender_nonce + b"|" + receiver_nonce,
        hashlib.sha256,
    ).digest()


class _Framer:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.sequence = 0

    def mac(self, header: bytes, payload: bytes) -> bytes:
        # Keyed BLAKE2b: one pass over the data (HMAC-SHA256 takes two, and is slower).
        mac = hashlib.blake2b(struct.pack("!Q", self.sequence) + header, key=self.key, digest_size=MAC_SIZE)
        mac.update(payload)
        self.sequence += 1
        return mac.digest()

    def frame(self, kind: int, payload: bytes) -> bytes:
        header = _HEADER.pack(kind, len(payload))
        return header + payload + self.mac(header, payload)

    async def read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = await reader.readexactly(_HEADER.size)
        kind, length = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise TransferError(f"frame of {length} bytes is larger than allowed")
        payload = await reader.readexactly(length)
        mac = await reader.readexactly(MAC_SIZE)
        if not hmac.compare_digest(mac, self.mac(header, payload)):
            raise TransferError(
                "integrity check failed: a frame was altered, replayed or sent with " "another secret"
            )
        return kind, payload


async def _line(reader: asyncio.StreamReader) -> dict:
    raw = await reader.readline()
    if not raw:
        raise TransferError("the peer closed the connection during the handshake")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TransferError("malformed handshake") from None
    if not isinstance(value, dict):
        raise TransferError("malformed handshake")
    return value


async def send_directory(
    host: str, port: int, source: Path, *, migration: str, secret: bytes, timeout: float = 600
) -> TransferStats:
    """Stream every regular file under `source` (subdirectories included) to a receiver."""
    started = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    try:
        nonce = secrets.token_bytes(16)
        writer.write(orjson.dumps({"migration": migration, "nonce": nonce.hex()}) + b"\n")
        await writer.drain()
        answer = await asyncio.wait_for(_line(reader), 30)
        if "error" in answer:
            raise TransferError(f"the receiver refused: {answer['error']}")
        framer = _Framer(_session_key(secret, migration, nonce, bytes.fromhex(answer["nonce"])))
        try:
            manifest, total = await _stream_files(writer, framer, source, timeout)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # The receiver may have said why before hanging up.
            try:
                verdict = await asyncio.wait_for(_line(reader), 2)
            except (TransferError, ConnectionError, TimeoutError):
                verdict = {}
            reason = verdict.get("error") or f"connection lost ({exc})"
            raise TransferError(f"the receiver rejected the transfer: {reason}") from None
        verdict = await asyncio.wait_for(_line(reader), timeout)
        if not verdict.get("ok"):
            raise TransferError(f"the receiver rejected the transfer: {verdict.get('error')}")
        return TransferStats(len(manifest), total, time.perf_counter() - started)
    finally:
        writer.close()


async def _stream_files(
    writer: asyncio.StreamWriter, framer: _Framer, source: Path, timeout: float
) -> tuple[dict[str, int], int]:
    manifest: dict[str, int] = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.relative_to(source).as_posix()
        writer.write(framer.frame(FILE, orjson.dumps({"name": name})))
        size = 0
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                writer.write(framer.frame(DATA, chunk))
                await asyncio.wait_for(writer.drain(), timeout)
        writer.write(framer.frame(DONE, b""))
        manifest[name] = size
    writer.write(framer.frame(END, orjson.dumps(manifest)))
    await writer.drain()
    return manifest, sum(manifest.values())


async def receive_directory(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    destination_for: dict[str, Path],
    secret: bytes,
    timeout: float = 600,
) -> tuple[str, TransferStats]:
    """Serve one incoming transfer. `destination_for` maps the migrations this agent expects
    to the directory their images go to (replaced if an earlier transfer left one)."""
    started = time.perf_counter()
    hello = await asyncio.wait_for(_line(reader), 30)
    migration = str(hello.get("migration", ""))
    if migration not in destination_for:
        writer.write(orjson.dumps({"error": f"no transfer expected for migration {migration!r}"}) + b"\n")
        await writer.drain()
        raise TransferError(f"unexpected transfer for migration {migration!r}")
    target = destination_for[migration]
    nonce = secrets.token_bytes(16)
    writer.write(orjson.dumps({"nonce": nonce.hex()}) + b"\n")
    await writer.drain()
    try:
        sender_nonce = bytes.fromhex(str(hello.get("nonce", "")))
    except ValueError:
        raise TransferError("malformed handshake: the nonce is not hex") from None
    framer = _Framer(_session_key(secret, migration, sender_nonce, nonce))
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        received, total = await _receive_files(reader, framer, staging, timeout)
        if target.exists():
            # A repeated dump re-sends the whole image; the receiver only offers targets
            # that nothing has been restored from yet.
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = str(exc) if isinstance(exc, TransferError) else f"{type(exc).__name__}: {exc}"
        with_context = TransferError(f"transfer for {migration} failed: {reason}")
        try:
            writer.write(orjson.dumps({"ok": False, "error": reason}) + b"\n")
            await writer.drain()
        except (ConnectionError, RuntimeError):
            pass
        if isinstance(exc, asyncio.IncompleteReadError):
            raise TransferError(f"transfer for {migration} failed: the sender went away mid-stream") from None
        raise with_context from exc
    writer.write(b'{"ok": true}\n')
    await writer.drain()
    return migration, TransferStats(len(received), total, time.perf_counter() - started)


async def _receive_files(
    reader: asyncio.StreamReader, framer: _Framer, staging: Path, timeout: float
) -> tuple[dict[str, int], int]:
    """Read frames into `staging` until END; check the sender's manifest. Every frame's MAC
    covers its sequence number, so nothing can be altered, dropped, reordered or replayed."""
    received: dict[str, int] = {}
    current = None
    while True:
        kind, payload = await asyncio.wait_for(framer.read(reader), timeout)
        if kind == FILE:
            name = str(orjson.loads(payload)["name"])
            parts = name.split("/")
            if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise TransferError(f"refusing file name {name!r}")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            current = (name, (staging / name).open("wb"))
        elif kind == DATA and current:
            current[1].write(payload)
        elif kind == DONE and current:
            name, handle = current
            handle.close()
            received[name] = (staging / name).stat().st_size
            current = None
        elif kind == END:
            if orjson.loads(payload) != received:
                raise TransferError("the files received do not match the sender's manifest")
            return received, sum(received.values())
        else:
            raise TransferError(f"unexpected frame type {kind}")
