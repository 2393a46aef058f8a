"""Hold the packets a frozen pod never saw, and hand them to it once it runs again.

While CRIU's network lock is on, every packet for the pod is dropped. Its peers do not
know: they retransmit after their retransmission timeout, which doubles each time (200 ms,
400 ms, 800 ms...), so a client that sent a request just after the freeze waits well past
the moment the pod runs again. The agent copies those packets as they arrive (an AF_PACKET
tap on the pod's interfaces sees them before the lock drops them) and, once the pod runs
again — on the destination after the commit, or on the source after a rollback — sends them
again from the node. The restored sockets accept them as the segments they were waiting
for, and the peer's answer comes without waiting for its timer.

Only copies are taken; nothing is delayed or altered on the way, so a copy that arrives
twice is harmless (TCP drops a segment it already has). IPv4 TCP only.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
MAX_PACKETS = 20_000
MAX_BYTES = 32 * 2**20

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(netns: Path | None, make: Callable[[], T]) -> T:
    """Run `make()` with the calling thread in network namespace `netns` (None: as is).
    Sockets keep the namespace they were created in."""
    if netns is None:
        return make()
    result: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _setns(netns)
            result.append(make())
        except BaseException as exc:  # - re-raised in the caller
            errors.append(exc)

    # A throwaway thread: its namespace goes away with it.
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def tcp_checksum_fixed(packet: bytes) -> bytes:
    """The IPv4 TCP packet with its TCP checksum computed (a tap on a virtual interface can
    see packets whose checksum was left for the hardware to fill in)."""
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    segment = bytearray(packet[ihl:total])
    if len(segment) < 20:
        return packet
    segment[16:18] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    data = pseudo + bytes(segment) + (b"\0" if len(segment) % 2 else b"")
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    segment[16:18] = struct.pack("!H", ~s & 0xFFFF)
    return packet[:ihl] + bytes(segment)


@dataclass
class PacketHold:
    """Copies of incoming IPv4 TCP packets on a pod's interfaces, from start() to stop()."""

    netns: Path
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    overflow: bool = False
    _sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _bytes: int = 0

    def start(self) -> PacketHold:
        def open_taps() -> list[socket.socket]:
            taps = []
            for _index, name in socket.if_nameindex():
                if name == "lo":
                    continue
                tap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
                tap.bind((name, ETH_P_IP))
                tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
                tap.settimeout(0.2)
                taps.append(tap)
            return taps

        self._sockets = in_netns(self.netns, open_taps)
        for tap in self._sockets:
            thread = threading.Thread(target=self._read, args=(tap,), daemon=True, name="clm-holdback")
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, tap: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data, address = tap.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == PACKET_OUTGOING or len(data) < 40 or data[9] != socket.IPPROTO_TCP:
                continue
            if len(self.packets) >= MAX_PACKETS or self._bytes + len(data) > MAX_BYTES:
                self.overflow = True
                continue
            self.packets.append((time.monotonic(), data))
            self._bytes += len(data)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(1)
        for tap in self._sockets:
            tap.close()

    def replay(self, *, since: float, from_netns: Path | None) -> int:
        """Send again every packet copied at or after `since` (monotonic), routed from the
        node's namespace to wherever the pod's IP lives now. Returns how many were sent."""
        self.stop()
        wanted = [data for at, data in self.packets if at >= since]
        if not wanted:
            return 0
        sender = in_netns(
            from_netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )
        sent = 0
        try:
            for data in wanted:
                destination = socket.inet_ntoa(data[16:20])
                try:
                    sender.sendto(tcp_checksum_fixed(data), (destination, 0))
                    sent += 1
                except OSError:
                    continue
        finally:
            sender.close()
        return sent
