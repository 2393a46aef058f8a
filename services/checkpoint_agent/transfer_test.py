"""The image transfer channel over real loopback sockets, inside real mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.checkpoint_agent.certs import Pem, make_agent_cert, make_ca, write_agent_tls
from services.checkpoint_agent.tls import AgentTls
from services.checkpoint_agent.transfer import (
    Growing,
    TransferError,
    open_channel,
    receive_connection,
    send_directory,
    sending_size,
)


def make_images(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    files = {"pages-1.img": os.urandom(5 * 2**20 + 123), "core-1.img": os.urandom(4096), "empty.img": b""}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def ca() -> Pem:
    return make_ca()


def identity(directory: Path, ca: Pem, *, trusted: tuple[Pem, ...] = ()) -> AgentTls:
    write_agent_tls(directory, ca, make_agent_cert(ca), trusted=trusted)
    return AgentTls(directory)


@pytest.fixture
def sender(tmp_path: Path, ca: Pem) -> AgentTls:
    return identity(tmp_path / "sender-tls", ca)


class Receiver:
    """One connection served as the agent serves it (a worker thread), its outcome kept."""

    def __init__(self, targets: dict[str, Path], tls: AgentTls) -> None:
        self.targets, self.tls = targets, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.outcome: dict[str, Any] = {}
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            self.outcome["result"] = receive_connection(
                conn, tls=self.tls, destination_for=self.targets, timeout=5
            )
        except Exception as exc:  # - the test inspects it
            self.outcome["error"] = exc
        finally:
            conn.close()
            self.listener.close()
            self.done.set()

    async def result(self) -> tuple[str, Any]:
        await asyncio.to_thread(self.done.wait, 30)
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if ".partial" in p.name)


async def test_round_trip(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    files = make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    stats = await send_directory("127.0.0.1", receiver.port, tmp_path / "src", migration="mig-1", tls=sender)
    migration, received = await receiver.result()
    assert migration == "mig-1" and stats.files == received.files == 3
    assert stats.bytes == sum(len(d) for d in files.values())
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
    assert leftovers(tmp_path) == []


async def test_a_pre_copy_parent_link_is_not_followed(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    # A stacked dump's `parent` points at the round below, which travelled on its own.
    earlier = tmp_path / "rounds" / "1" / "c" / "criu"
    earlier.mkdir(parents=True)
    (earlier / "pages-1.img").write_bytes(b"round one")
    final = tmp_path / "src" / "c" / "criu"
    final.mkdir(parents=True)
    (final / "pages-1.img").write_bytes(b"final")
    (final / "parent").symlink_to(earlier)
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    stats = await send_directory("127.0.0.1", receiver.port, tmp_path / "src", migration="mig-1", tls=sender)
    await receiver.result()
    assert stats.files == 1 and stats.bytes == len(b"final")
    assert not (tmp_path / "dst" / "c" / "criu" / "parent").exists()


async def test_holes_are_not_sent_and_the_file_keeps_its_size_and_other_bytes(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    src = tmp_path / "src" / "c" / "criu"
    src.mkdir(parents=True)
    data = os.urandom(64 << 10)
    (src / "pages-1.img").write_bytes(data)
    holes = {"c/criu/pages-1.img": [(4096, 8192), (60 << 10, 4 << 10)]}  # the second ends the file
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    channel = await open_channel("127.0.0.1", receiver.port, migration="mig-1", tls=sender)
    stats = await channel.send(tmp_path / "src", holes=holes)
    await receiver.result()
    got = (tmp_path / "dst" / "c" / "criu" / "pages-1.img").read_bytes()
    assert len(got) == len(data) and stats.bytes == len(data) and stats.skipped == 12 << 10
    assert got[:4096] == data[:4096] and got[12288 : 60 << 10] == data[12288 : 60 << 10]
    assert got[4096:12288] == bytes(8192) and got[60 << 10 :] == bytes(4 << 10)


async def test_progress_rises_to_the_bytes_sent_without_the_holes(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    files = make_images(tmp_path / "src")
    holes = {"pages-1.img": [(4096, 1 << 20)]}
    total = sending_size(tmp_path / "src", holes)
    assert total == sum(len(d) for d in files.values()) - (1 << 20)
    heard: list[int] = []
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    channel = await open_channel("127.0.0.1", receiver.port, migration="mig-1", tls=sender)
    stats = await channel.send(tmp_path / "src", holes=holes, progress=heard.append)
    await receiver.result()
    assert len(heard) >= 3 and heard == sorted(heard) and heard[-1] == total
    assert stats.bytes - stats.skipped == total


async def test_a_sender_of_another_cluster_is_refused_and_leaves_nothing(tmp_path: Path, ca: Pem) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    stranger = identity(tmp_path / "stranger-tls", make_ca(common_name="another-cluster"))
    with pytest.raises(TransferError):
        await send_directory("127.0.0.1", receiver.port, tmp_path / "src", migration="mig-1", tls=stranger)
    with pytest.raises(TransferError, match="without this cluster's agent certificate"):
        await receiver.result()
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_memory_is_never_sent_to_a_receiver_of_another_cluster(
    tmp_path: Path, sender: AgentTls
) -> None:
    make_images(tmp_path / "src")
    impostor = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "imp-tls", make_ca(common_name="x")))
    with pytest.raises(TransferError, match="TLS with the receiver failed"):
        await send_directory("127.0.0.1", impostor.port, tmp_path / "src", migration="mig-1", tls=sender)
    with pytest.raises(TransferError):
        await impostor.result()
    assert not (tmp_path / "dst").exists()


async def test_a_plain_connection_is_refused(tmp_path: Path, ca: Pem) -> None:
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    writer.write(b'{"migration": "mig-1", "nonce": "00", "protocol": 2}\n')  # the old, plain channel
    answer = b""
    with contextlib.suppress(ConnectionError):  # the receiver may reset the connection
        await writer.drain()
        answer = await reader.read()
    writer.close()
    assert b"mig-1" not in answer and b"ready" not in answer  # nothing but a TLS alert, if anything
    with pytest.raises(TransferError, match="without this cluster's agent certificate"):
        await receiver.result()
    assert not (tmp_path / "dst").exists()


async def _proxy(
    target_port: int, mutate: Callable[[int, bytes], bytes], record: list[bytes] | None = None
) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        seen = 0

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool) -> None:
            nonlocal seen
            try:
                while data := await src.read(65536):
                    if upstream:
                        data = mutate(seen, data)
                        if record is not None:
                            record.append(data)
                        seen += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, upstream=True), pipe(up_reader, writer, upstream=False))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1])


async def test_a_flipped_bit_is_detected(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))

    def flip(offset: int, data: bytes) -> bytes:
        target = 3 * 2**20  # somewhere inside the pages
        if offset <= target < offset + len(data):
            flipped = bytearray(data)
            flipped[target - offset] ^= 0x01
            return bytes(flipped)
        return data

    proxy = await _proxy(receiver.port, flip)
    with pytest.raises(TransferError):
        await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", tls=sender)
    with pytest.raises(TransferError, match="TLS stream broke"):
        await receiver.result()
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_a_recorded_session_cannot_be_replayed(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    make_images(tmp_path / "src")
    receiving = identity(tmp_path / "recv-tls", ca)
    first = Receiver({"mig-1": tmp_path / "first"}, receiving)
    recorded: list[bytes] = []
    proxy = await _proxy(first.port, lambda _, data: data, recorded)
    await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", tls=sender)
    await first.result()
    # An attacker replays the captured bytes to a receiver expecting the same migration.
    second = Receiver({"mig-1": tmp_path / "second"}, receiving)
    reader, writer = await asyncio.open_connection("127.0.0.1", second.port)
    writer.write(b"".join(recorded))
    with contextlib.suppress(ConnectionError):  # the receiver hangs up on the forgery
        await writer.drain()
    with pytest.raises(TransferError):
        await second.result()
    writer.close()
    assert not (tmp_path / "second").exists()


async def test_sender_dying_mid_stream_leaves_nothing(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))

    def cut(offset: int, data: bytes) -> bytes:
        if offset > 2 * 2**20:
            raise ConnectionResetError("sender died")
        return data

    proxy = await _proxy(receiver.port, cut)
    with pytest.raises((TransferError, ConnectionError, asyncio.IncompleteReadError)):
        await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", tls=sender, timeout=5)
    with pytest.raises(TransferError, match="went away|failed"):
        await receiver.result()
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_unexpected_migration_is_refused(tmp_path: Path, ca: Pem, sender: AgentTls) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    with pytest.raises(TransferError, match="no transfer expected"):
        await send_directory("127.0.0.1", receiver.port, tmp_path / "src", migration="mig-2", tls=sender)
    with pytest.raises(TransferError, match="unexpected transfer"):
        await receiver.result()


async def test_certificates_rotate_without_dropping_a_transfer_in_flight(tmp_path: Path, ca: Pem) -> None:
    make_images(tmp_path / "src")
    sending, receiving = identity(tmp_path / "send-tls", ca), identity(tmp_path / "recv-tls", ca)
    receiver = Receiver({"mig-1": tmp_path / "dst"}, receiving)
    new_ca = make_ca(common_name="clm-agent-ca-2")
    rotated = threading.Event()

    def rotate_midway(offset: int, data: bytes) -> bytes:
        if offset > 2**20 and not rotated.is_set():
            # Both agents' Secrets move to the new CA (trusting the old one meanwhile).
            write_agent_tls(tmp_path / "send-tls", new_ca, make_agent_cert(new_ca), trusted=(ca,))
            write_agent_tls(tmp_path / "recv-tls", new_ca, make_agent_cert(new_ca), trusted=(ca,))
            rotated.set()
        return data

    proxy = await _proxy(receiver.port, rotate_midway)
    await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", tls=sending)
    assert rotated.is_set()
    await receiver.result()  # the session made before the rotation finished the transfer
    # New connections use the new files (read again as they changed).
    again = Receiver({"mig-2": tmp_path / "dst-2"}, receiving)
    await send_directory("127.0.0.1", again.port, tmp_path / "src", migration="mig-2", tls=sending)
    await again.result()
    assert sending.reloads == 1 and receiving.reloads == 1
    # Once the old CA is no longer trusted, a certificate it signed is refused.
    write_agent_tls(tmp_path / "recv-tls", new_ca, make_agent_cert(new_ca))
    old = identity(tmp_path / "old-tls", ca)
    last = Receiver({"mig-3": tmp_path / "dst-3"}, receiving)
    with pytest.raises(TransferError):
        await send_directory("127.0.0.1", last.port, tmp_path / "src", migration="mig-3", tls=old)
    with pytest.raises(TransferError):
        await last.result()


async def test_a_sender_of_another_protocol_version_is_told_why(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))

    def old_sender() -> bytes:
        raw = socket.create_connection(("127.0.0.1", receiver.port), timeout=5)
        with sender.client_context().wrap_socket(raw, server_hostname="clm-checkpoint-agent") as sock:
            sock.sendall(b'{"migration": "mig-1", "protocol": 2}\n')
            return sock.recv(4096)

    answer = await asyncio.to_thread(old_sender)
    assert b"the sender speaks transfer protocol 2, this agent 4" in answer
    with pytest.raises(TransferError, match="run the same CLM version on every node"):
        await receiver.result()
    assert not (tmp_path / "dst").exists()


class Dump:
    """A stand-in for CRIU writing a pages image: the next chunk goes in only once the
    sender has sent what is there (so the test sees bytes travel before the end)."""

    def __init__(self, criu: Path) -> None:
        criu.mkdir(parents=True)
        self.pages = criu / "pages-1.img"
        self.written = 0
        self.sent = 0
        self.caught_up = threading.Condition()

    def progress(self, sent: int) -> None:
        with self.caught_up:
            self.sent = sent
            self.caught_up.notify_all()

    def append(self, data: bytes) -> None:
        with self.pages.open("ab") as handle:
            handle.write(data)
        self.written += len(data)
        with self.caught_up:
            assert self.caught_up.wait_for(lambda: self.sent >= self.written, timeout=10)


async def test_a_pages_image_travels_while_the_dump_writes_it(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    dump = Dump(tmp_path / "src" / "c" / "criu")
    chunks = [os.urandom(1 << 20) for _ in range(3)]
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    channel = await open_channel("127.0.0.1", receiver.port, migration="mig-1", tls=sender)
    growing = Growing("*/criu/pages-*.img")
    sending = asyncio.ensure_future(channel.send(tmp_path / "src", progress=dump.progress, growing=growing))

    def write_the_dump() -> None:
        for chunk in chunks:
            dump.append(chunk)
        (dump.pages.parent / "core-1.img").write_bytes(b"core")  # written last, sent after the end
        (tmp_path / "src" / "c" / "rootfs.tar").write_bytes(b"tar")
        growing.finish()

    await asyncio.to_thread(write_the_dump)
    stats = await sending
    await receiver.result()
    assert growing.early_bytes == 3 << 20  # all of it went before the dump ended
    assert (tmp_path / "dst" / "c" / "criu" / "pages-1.img").read_bytes() == b"".join(chunks)
    assert (tmp_path / "dst" / "c" / "criu" / "core-1.img").read_bytes() == b"core"
    assert stats.files == 3 and stats.bytes == (3 << 20) + 7
    assert leftovers(tmp_path) == []


async def test_a_dump_that_fails_while_its_pages_travel_leaves_nothing_on_the_receiver(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    dump = Dump(tmp_path / "src" / "c" / "criu")
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    channel = await open_channel("127.0.0.1", receiver.port, migration="mig-1", tls=sender)
    growing = Growing("*/criu/pages-*.img")
    sending = asyncio.ensure_future(channel.send(tmp_path / "src", progress=dump.progress, growing=growing))
    await asyncio.to_thread(dump.append, os.urandom(1 << 20))
    growing.fail()
    with pytest.raises(TransferError, match="the dump failed"):
        await sending
    with pytest.raises(Exception):  # noqa: B017 - the connection ended mid-file: any error
        await receiver.result()
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_a_dump_without_a_pages_image_is_sent_once_it_ends(
    tmp_path: Path, ca: Pem, sender: AgentTls
) -> None:
    criu = tmp_path / "src" / "c" / "criu"
    criu.mkdir(parents=True)
    receiver = Receiver({"mig-1": tmp_path / "dst"}, identity(tmp_path / "recv-tls", ca))
    channel = await open_channel("127.0.0.1", receiver.port, migration="mig-1", tls=sender)
    growing = Growing("*/criu/pages-*.img")
    sending = asyncio.ensure_future(channel.send(tmp_path / "src", growing=growing))
    (criu / "core-1.img").write_bytes(b"core")
    growing.finish()
    stats = await sending
    await receiver.result()
    assert stats.files == 1 and growing.early_bytes == 0
    assert (tmp_path / "dst" / "c" / "criu" / "core-1.img").read_bytes() == b"core"
