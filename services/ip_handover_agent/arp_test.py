import socket
import struct

from services.ip_handover_agent.arp import ARP_REPLY, ARP_REQUEST, BROADCAST, gratuitous_frames

MAC = bytes.fromhex("02aabbccddee")


def _fields(frame: bytes) -> tuple[bytes, int, bytes, str, bytes, str]:
    op, sha, spa, tha, tpa = struct.unpack("!H6s4s6s4s", frame[20:42])
    return frame[:6], op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa)


def test_gratuitous_frames_are_the_forms_linux_lets_override_a_fresh_entry() -> None:
    request, reply = (_fields(f) for f in gratuitous_frames(MAC, "10.0.0.5"))
    # the kernel's arp_is_garp: sender and target IP equal; a reply also needs tha == sha
    assert request == (BROADCAST, ARP_REQUEST, MAC, "10.0.0.5", b"\x00" * 6, "10.0.0.5")
    assert reply == (BROADCAST, ARP_REPLY, MAC, "10.0.0.5", MAC, "10.0.0.5")
