"""The image transfer channel over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from services.checkpoint_agent.transfer import TransferError, receive_directory, send_directory

SECRET = b"cluster-agent-secret-for-tests"


def make_images(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    files = {"pages-1.img": os.urandom(5 * 2**20 + 123), "core-1.img": os.urandom(4096), "empty.img": b""}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


class Receiver:
    def __init__(self, targets: dict[str, Path], secret: bytes = SECRET) -> None:
        self.targets, self.secret = targets, secret
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.result.set_result(
                await receive_directory(
                    reader, writer, destination_for=self.targets, secret=self.secret, timeout=5
                )
            )
        except Exception as exc:  # - the test inspects it
            self.result.set_exception(exc)
        finally:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


def leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if ".partial" in p.name)


async def test_round_trip(tmp_path: Path) -> None:
    files = make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()
    stats = await send_directory("127.0.0.1", port, tmp_path / "src", migration="mig-1", secret=SECRET)
    migration, received = await receiver.result
    assert migration == "mig-1" and stats.files == received.files == 3
    assert stats.bytes == sum(len(d) for d in files.values())
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
    assert leftovers(tmp_path) == []


async def test_wrong_secret_is_rejected_and_leaves_nothing(tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()
    with pytest.raises(TransferError, match="rejected"):
        await send_directory("127.0.0.1", port, tmp_path / "src", migration="mig-1", secret=b"other")
    with pytest.raises(TransferError, match="integrity check failed"):
        await receiver.result
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def _proxy(target_port: int, mutate, record: list[bytes] | None = None) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        seen = 0

        async def pipe(src, dst, *, upstream: bool) -> None:
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
    return server.sockets[0].getsockname()[1]


async def test_a_flipped_bit_is_detected(tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()

    def flip(offset: int, data: bytes) -> bytes:
        target = 3 * 2**20  # somewhere inside the pages
        if offset <= target < offset + len(data):
            flipped = bytearray(data)
            flipped[target - offset] ^= 0x01
            data = bytes(flipped)
            return bytes(data)
        return data

    proxy = await _proxy(port, flip)
    with pytest.raises(TransferError):
        await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", secret=SECRET)
    with pytest.raises(TransferError, match="integrity check failed"):
        await receiver.result
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_a_recorded_session_cannot_be_replayed(tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    first = Receiver({"mig-1": tmp_path / "first"})
    recorded: list[bytes] = []
    proxy = await _proxy(await first.start(), lambda _, data: data, recorded)
    await send_directory("127.0.0.1", proxy, tmp_path / "src", migration="mig-1", secret=SECRET)
    await first.result
    # An attacker replays the captured bytes to a receiver expecting the same migration.
    second = Receiver({"mig-1": tmp_path / "second"})
    reader, writer = await asyncio.open_connection("127.0.0.1", await second.start())
    writer.write(b"".join(recorded))
    with contextlib.suppress(ConnectionError):  # the receiver hangs up on the forgery
        await writer.drain()
    with pytest.raises(TransferError, match="integrity check failed"):
        await second.result
    writer.close()
    assert not (tmp_path / "second").exists()


async def test_sender_dying_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()

    def cut(offset: int, data: bytes) -> bytes:
        if offset > 2 * 2**20:
            raise ConnectionResetError("sender died")
        return data

    proxy = await _proxy(port, cut)
    with pytest.raises((TransferError, ConnectionError, asyncio.IncompleteReadError)):
        await send_directory(
            "127.0.0.1", proxy, tmp_path / "src", migration="mig-1", secret=SECRET, timeout=5
        )
    with pytest.raises(TransferError, match="went away|failed"):
        await receiver.result
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


async def test_unexpected_migration_is_refused(tmp_path: Path) -> None:
    make_images(tmp_path / "src")
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()
    with pytest.raises(TransferError, match="no transfer expected"):
        await send_directory("127.0.0.1", port, tmp_path / "src", migration="mig-2", secret=SECRET)
    with pytest.raises(TransferError, match="unexpected transfer"):
        await receiver.result


async def test_a_sender_of_another_protocol_version_is_told_why(tmp_path: Path) -> None:
    receiver = Receiver({"mig-1": tmp_path / "dst"})
    port = await receiver.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"migration": "mig-1", "nonce": "00"}\n')  # protocol 1 sent no version
    answer = await reader.readline()
    writer.close()
    assert b"the sender speaks transfer protocol 1, this agent 2" in answer
    with pytest.raises(TransferError, match="run the same CLM version on every node"):
        await receiver.result
    assert not (tmp_path / "dst").exists()
