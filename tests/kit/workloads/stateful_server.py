"""A stateful TCP server for migration tests (runs inside a container, stdlib only).

State: MIB mebibytes, filled deterministically. Protocol, one line per request:
  "inc"  -> n (the request counter), after state[(n * 4099) % size] = n % 256
  "hash" -> sha256 of the whole state
A client that replays the same mutations knows the expected hash at any n.
"""

import hashlib
import socket
import sys


def initial_state(size: int) -> bytearray:
    return bytearray(bytes(range(256)) * (size // 256))


def mutate(state: bytearray, n: int) -> None:
    state[(n * 4099) % len(state)] = n % 256


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    state = initial_state(mib * 2**20)
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
