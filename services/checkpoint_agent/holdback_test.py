import socket
import struct

from services.checkpoint_agent.holdback import tcp_checksum_fixed


def _checksum_ok(packet: bytes) -> bool:
    ihl = (packet[0] & 0x0F) * 4
    segment = packet[ihl:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def _packet(payload: bytes, checksum: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 7000, 1, 2, 5 << 4, 0x18, 65535, checksum, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        1,
        0,
        64,
        socket.IPPROTO_TCP,
        0,
        socket.inet_aton("10.0.0.1"),
        socket.inet_aton("10.0.0.2"),
    )
    return ip + tcp


def test_a_partial_checksum_is_completed() -> None:
    # As a veth tap sees a packet whose checksum was left for offload: only a placeholder.
    packet = _packet(b"inc\n", checksum=0x1234)
    assert not _checksum_ok(packet)
    fixed = tcp_checksum_fixed(packet)
    assert _checksum_ok(fixed)
    assert fixed[:20] == packet[:20] and fixed[-4:] == b"inc\n"


def test_odd_length_payload_and_idempotence() -> None:
    fixed = tcp_checksum_fixed(_packet(b"hash\n!", checksum=0))
    assert _checksum_ok(fixed)
    assert tcp_checksum_fixed(fixed) == fixed


def test_trailing_ethernet_padding_is_not_summed() -> None:
    # Short frames arrive padded; the IP total length says where the packet ends.
    packet = _packet(b"", checksum=0)
    fixed = tcp_checksum_fixed(packet + b"\0" * 6)
    assert _checksum_ok(fixed[: len(packet)])
