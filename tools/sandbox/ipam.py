"""Pod IPs for the sandbox's nodes: one range on the shared segment, so that a pod keeps
its address wherever it moves (the routed backend hands a /32 over between nodes).

An address is free when no pod in the API holds it and no pod being started has reserved
it; the API is the record, so nothing needs saving across restarts.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable


class IpamExhausted(RuntimeError):
    pass


class Ipam:
    def __init__(self, first: str, last: str, used: Callable[[], Iterable[str]]) -> None:
        self.first, self.last = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
        if self.last < self.first:
            raise ValueError(f"empty pod IP range {first}..{last}")
        self.used = used
        self.reserved: dict[str, str] = {}  # pod runtime UID -> IP
        self.lock = threading.Lock()

    def allocate(self, uid: str) -> str:
        with self.lock:
            if uid in self.reserved:
                return self.reserved[uid]
            taken = set(self.used()) | set(self.reserved.values())
            address = self.first
            while address <= self.last:
                if str(address) not in taken:
                    self.reserved[uid] = str(address)
                    return str(address)
                address += 1
            raise IpamExhausted(
                f"no free pod IP in {self.first}..{self.last}: {len(taken)} in use; delete some pods"
            )

    def release(self, uid: str) -> None:
        with self.lock:
            self.reserved.pop(uid, None)
