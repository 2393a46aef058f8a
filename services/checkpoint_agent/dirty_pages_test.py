import os
import struct
import subprocess
import sys

from services.checkpoint_agent.dirty_pages import (
    count_dirty,
    dirty_pages,
    process_dirty_pages,
    process_tree,
    resident_anonymous_bytes,
)

SOFT_DIRTY, SWAPPED, PRESENT = 1 << 55, 1 << 62, 1 << 63


def entries(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", v) for v in values)


def test_counts_soft_dirty_pages_in_memory_or_swap() -> None:
    pfn = 0x12345
    found = entries(
        PRESENT | SOFT_DIRTY | pfn,  # written since the pre-dump
        PRESENT | pfn,  # in memory, clean
        SWAPPED | SOFT_DIRTY,  # written, then swapped out
        SOFT_DIRTY,  # a new mapping's untouched page: nothing to copy
        0,
        PRESENT | SOFT_DIRTY | (1 << 61),  # file-backed, written (a private copy)
    )
    assert count_dirty(found) == 3


def test_counts_across_many_entries() -> None:
    found = entries(*([PRESENT | SOFT_DIRTY] * 1000 + [PRESENT] * 24 + [SOFT_DIRTY] * 7))
    assert count_dirty(found) == 1000


def test_process_tree_holds_the_root_and_its_descendants() -> None:
    script = (
        "import subprocess, time; c = subprocess.Popen(['sleep', '30']); "
        "print(c.pid, flush=True); time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        tree = process_tree(parent.pid)
        assert tree[0] == parent.pid and child in tree and os.getpid() not in tree
    finally:
        parent.kill()
        parent.wait()
        if "child" in locals():
            os.kill(child, 9)


def test_reads_a_live_process_pagemap() -> None:
    # This kernel may have no soft-dirty bits (then every count is 0); the read itself must
    # walk every private mapping without failing, and a vanished process counts for nothing.
    assert process_dirty_pages(os.getpid()) >= 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert dirty_pages([gone.pid]) == 0


def test_resident_anonymous_memory_counts_what_a_process_wrote() -> None:
    # A child that writes 64 MiB of its own memory holds at least that much as RssAnon.
    script = (
        "import sys; b = bytearray(64 << 20); b[::4096] = b'x' * (len(b) // 4096); "
        "print(1, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "1\n"
        assert resident_anonymous_bytes([child.pid]) >= 64 << 20
    finally:
        child.kill()
        child.wait()
    assert resident_anonymous_bytes([child.pid]) == 0  # gone: nothing
