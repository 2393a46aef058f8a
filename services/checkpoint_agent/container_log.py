"""Container output kept the way kubelet keeps it (CRI log format, one file per container),
for the local runc runtime: a small relay process holds the read ends of the container's
stdout and stderr pipes, like conmon does for podman.

Pipes, not files: runc records a container's stdio pipes at checkpoint and hands them to
CRIU as inherited descriptors at restore, so the restored container writes into the
destination's fresh pipes, and its relay writes the destination's log. A regular file
opened outside the container would not restore on another node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The relay, run as `python3 -c RELAY LOG STDOUT_FD STDERR_FD`: stdlib only, so it runs from
# any interpreter (the agent may be a PEX). Lines become `<RFC3339Nano> <stream> F <line>`;
# a line longer than 16 KiB is cut into `P` (partial) records as kubelet does. It ends when
# every writer is gone (the container exited, or was checkpointed and removed).
RELAY = r"""
import os, selectors, sys, time
out = open(sys.argv[1], "ab", buffering=0)
names = {int(sys.argv[2]): b"stdout", int(sys.argv[3]): b"stderr"}
pending = {fd: b"" for fd in names}
sel = selectors.DefaultSelector()
for fd in names:
    sel.register(fd, selectors.EVENT_READ)
def record(fd, line, tag):
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + ".%09dZ" % (now % 10**9)
    out.write(stamp.encode() + b" " + names[fd] + b" " + tag + b" " + line + b"\n")
def line_done(fd, line):
    while len(line) > 16384:
        record(fd, line[:16384], b"P")
        line = line[16384:]
    record(fd, line, b"F")
while names:
    for key, _ in sel.select():
        fd = key.fd
        data = os.read(fd, 65536)
        if not data:
            if pending[fd]:
                line_done(fd, pending[fd])
            sel.unregister(fd)
            del names[fd]
            continue
        *lines, pending[fd] = (pending[fd] + data).split(b"\n")
        for line in lines:
            line_done(fd, line)
        while len(pending[fd]) > 16384:
            record(fd, pending[fd][:16384], b"P")
            pending[fd] = pending[fd][16384:]
"""


def log_path(log_dir: Path, container_id: str) -> Path:
    return log_dir / f"{container_id}.log"


def start_relay(log_file: Path) -> tuple[int, int]:
    """Start a relay appending to `log_file`; returns the write ends to give the container
    as stdout and stderr (the caller closes them once runc has passed them on)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-c", RELAY, str(log_file), str(out_r), str(err_r)],
            pass_fds=(out_r, err_r),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the agent's or runtime's restarts
            close_fds=True,
        )
    except BaseException:
        for fd in (out_w, err_w):
            os.close(fd)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
    return out_w, err_w


@dataclass(frozen=True)
class LogLine:
    time: str
    stream: str
    text: str


class LogReader:
    """Reads a CRI log file as it grows: each `poll()` returns the records completed since
    the last one, partial (`P`) records joined back into their lines."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.offset = 0
        self.partial = ""

    def poll(self) -> list[LogLine]:
        try:
            with self.log_file.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a record still being written waits
        self.offset += len(complete)
        out = []
        for raw in complete.decode(errors="replace").splitlines():
            parts = raw.split(" ", 3)
            if len(parts) < 3:
                continue
            stamp, stream, tag = parts[:3]
            text = parts[3] if len(parts) == 4 else ""
            if tag == "P":
                self.partial += text
                continue
            out.append(LogLine(stamp, stream, self.partial + text))
            self.partial = ""
        return out


def read_log(log_file: Path) -> list[LogLine]:
    """Every complete record of a CRI log file."""
    return LogReader(log_file).poll()


def render(lines: list[LogLine], *, tail: int | None = None, timestamps: bool = False) -> bytes:
    """What `kubectl logs` prints: the lines (the last `tail` of them), optionally stamped."""
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return b"".join(((f"{line.time} " if timestamps else "") + line.text + "\n").encode() for line in lines)
