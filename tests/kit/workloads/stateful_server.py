"""A stateful TCP server for migration tests (runs inside a container, stdlib only).

    stateful_server.py MIB [DIRTY_PERCENT_PER_SECOND [sweep|hot]]

State: MIB mebibytes, filled deterministically. With DIRTY_PERCENT_PER_SECOND, a writer
rewrites that share of the state's pages every second, each with the byte it already holds
(the page is dirty for the kernel, the state unchanged): the dirty rate pre-copy must beat.
`sweep` (the default) moves on through the whole state, so in time every page is written;
`hot` rewrites the same pages every second (a hot working set, as a database's).
Protocol, one line per request:
  "inc"  -> n (the request counter), after state[(n * 4099) % size] = n % 256
  "hash" -> sha256 of the whole state
A client that replays the same mutations knows the expected hash at any n.
"""

import hashlib
import socket
import sys
import threading
import time


def initial_state(size: int) -> bytearray:
    return bytearray(bytes(range(256)) * (size // 256))


def mutate(state: bytearray, n: int) -> None:
    state[(n * 4099) % len(state)] = n % 256


PAGE = 4096
TICK = 0.1


def dirty_pages(state: bytearray, percent_per_second: float, pattern: str = "sweep") -> None:
    """Rewrite percent_per_second of the state's pages each second, a slice every TICK, in a
    sweep over the whole state (`hot`: over the first percent_per_second of it only). One
    strided slice assignment per tick: it holds the GIL throughout, so no request's write
    lands between its read and its write."""
    view = memoryview(state)
    pages = len(state) // PAGE
    per_tick = max(1, int(pages * percent_per_second / 100 * TICK))
    if pattern == "hot":
        pages = min(pages, max(1, int(pages * percent_per_second / 100)))
    first, due = 0, time.monotonic()
    while True:
        count = min(per_tick, pages - first)
        span = slice(first * PAGE, (first + count) * PAGE, PAGE)
        view[span] = view[span]
        first = (first + count) % pages
        due += TICK
        time.sleep(max(0.0, due - time.monotonic()))


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    state = initial_state(mib * 2**20)
    if len(sys.argv) > 2 and float(sys.argv[2]) > 0:
        pattern = sys.argv[3] if len(sys.argv) > 3 else "sweep"
        if pattern not in ("sweep", "hot"):
            raise SystemExit(f"stateful_server.py: the writer's pattern is sweep or hot, not {pattern!r}")
        threading.Thread(target=dirty_pages, args=(state, float(sys.argv[2]), pattern), daemon=True).start()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 7000))
    server.listen()
    n = 0
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb", buffering=0) as stream:
            for line in stream:
                if line.strip() == b"hash":
                    conn.sendall(hashlib.sha256(state).hexdigest().encode() + b"\n")
                    continue
                if line.strip() == b"count":  # a client that reconnects asks where it left off
                    conn.sendall(f"{n}\n".encode())
                    continue
                n += 1
                mutate(state, n)
                conn.sendall(f"{n}\n".encode())


if __name__ == "__main__":
    main()
