"""Raw ARP on an interface: gratuitous announcements and who-has probes (AF_PACKET).

    python -m services.ip_handover_agent.arp garp IFACE IP
    python -m services.ip_handover_agent.arp probe IFACE IP SOURCE_IP [SECONDS]

`probe` prints every MAC address that answers for IP, one per line: the test of "at no
moment do two nodes answer for a pod IP" asks the segment itself.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
SIOCGIFHWADDR = 0x8927


def mac_of(iface: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", iface.encode()[:15]))
    return info[18:24]


ARP_REQUEST, ARP_REPLY = 1, 2


def _arp_frame(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str) -> bytes:
    ether = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        op,
        src_mac,
        socket.inet_aton(src_ip),
        dst_mac,
        socket.inet_aton(dst_ip),
    )
    return ether + arp


def gratuitous_frames(mac: bytes, ip: str) -> list[bytes]:
    """The two forms a neighbour treats as gratuitous: an RFC 5227 announcement (a request
    whose target is the sender's own address) and a reply whose target hardware address is
    the sender's. Linux only lets a gratuitous ARP replace an entry it learned less than
    `locktime` ago; a reply addressed to the broadcast MAC is an ordinary reply there, so a
    client that spoke to the old node a moment before the handover would keep its MAC."""
    return [
        _arp_frame(ARP_REQUEST, mac, ip, b"\x00" * 6, ip),
        _arp_frame(ARP_REPLY, mac, ip, mac, ip),
    ]


def gratuitous_arp(iface: str, ip: str, count: int = 2) -> None:
    """Tell every neighbour that `ip` is now at this interface's MAC."""
    mac = mac_of(iface)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((iface, 0))
        for _ in range(count):
            for frame in gratuitous_frames(mac, ip):
                s.send(frame)


def probe(iface: str, ip: str, source_ip: str, seconds: float = 0.5) -> set[str]:
    """Broadcast who-has `ip` and return the MAC of everyone who answers."""
    mac = mac_of(iface)
    answers: set[str] = set()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((iface, 0))
        s.send(_arp_frame(ARP_REQUEST, mac, source_ip, b"\x00" * 6, ip))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                frame = s.recv(128)
            except TimeoutError:
                break
            if len(frame) < 42:
                continue
            op, sender_mac, sender_ip = struct.unpack("!H6s4s", frame[20:32])
            if op == 2 and socket.inet_ntoa(sender_ip) == ip:
                answers.add(sender_mac.hex(":"))
    return answers


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "garp":
        gratuitous_arp(argv[1], argv[2])
        return 0
    if len(argv) >= 4 and argv[0] == "probe":
        for mac in sorted(probe(argv[1], argv[2], argv[3], float(argv[4]) if len(argv) > 4 else 0.5)):
            print(mac)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
