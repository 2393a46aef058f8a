"""A client of stateful_server that holds ONE connection and sends requests back to back
(stdlib only; runs in the client host's network namespace).

    python counting_client.py HOST PORT STOP_FILE RESULT_FILE [resume]

How long the client waits for one answer before it gives up: CLM_CLIENT_PATIENCE_SECONDS
(default 60; a benchmark in an emulated VM freezes a 1 GiB pod for longer).

resume: the server has served earlier clients; ask it how many requests it has counted and
go on from there (RESULT_FILE's "resumed_from" says where).

Every half second RESULT_FILE.progress holds the answers so far, the largest gap and the
last error (for live displays). Runs until STOP_FILE exists, then asks for the state's
hash and writes RESULT_FILE (JSON):
answers count, whether every answer was the next number (nothing lost or doubled), the
largest gap between two answers, each gap above 50 ms with its time, and any error
(a reset or reconnect would show here: the client never reconnects).
"""

import json
import os
import socket
import sys
import time


def connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    sock.settimeout(float(os.environ.get("CLM_CLIENT_PATIENCE_SECONDS", "60")))
    return sock


def main() -> None:
    host, port, stop_file, result_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    resume = len(sys.argv) > 5 and sys.argv[5] == "resume"
    sock = connect(host, port)
    stream = sock.makefile("rwb", buffering=0)
    answered = 0
    if resume:
        stream.write(b"count\n")
        answered = int(stream.readline())
    count, in_order, largest, gaps, error = answered, True, 0.0, [], None
    last = reported = time.monotonic()

    def progress() -> None:
        with open(result_file + ".progress.tmp", "w") as out:
            json.dump(
                {
                    "answers": count,
                    "in_order": in_order,
                    "largest_gap": largest,
                    "error": error,
                    "resumed_from": answered,
                },
                out,
            )
        os.rename(result_file + ".progress.tmp", result_file + ".progress")

    progress()
    with open(result_file + ".ready", "w"):
        pass

    try:
        while not os.path.exists(stop_file):
            sock.sendall(b"inc\n")
            line = stream.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            count += 1
            in_order = in_order and int(line) == count
            now = time.monotonic()
            gap = now - last
            largest = max(largest, gap)
            if gap > 0.05:
                gaps.append([round(time.time(), 3), round(gap, 4)])
            last = now
            if now - reported > 0.5:
                progress()
                reported = now
            time.sleep(0.002)
        sock.sendall(b"hash\n")
        digest = stream.readline().decode().strip()
    except Exception as exc:  # - reported to the test
        error, digest = f"{type(exc).__name__}: {exc}", None
    progress()
    with open(result_file + ".tmp", "w") as out:
        json.dump(
            {
                "answers": count,
                "in_order": in_order,
                "largest_gap": largest,
                "gaps": gaps,
                "error": error,
                "hash": digest,
                "resumed_from": answered,
            },
            out,
        )
    os.rename(result_file + ".tmp", result_file)


if __name__ == "__main__":
    main()
