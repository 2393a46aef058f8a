"""How many pages a running pod has written since its last pre-dump, read from the kernel's
soft-dirty bits without stopping it.

A pre-dump clears the bits of every page it copies (CRIU's --track-mem); the kernel sets a
page's bit again on its next write. Counting them after a round's transfer tells what the
next round would have to copy, without running it: the coordinator can stop the rounds as
soon as one shows the pod will not converge, instead of one round later.

/proc/<pid>/pagemap holds 8 bytes per page: bit 55 soft-dirty, bit 62 swapped, bit 63
present (Documentation/admin-guide/mm/pagemap.rst). A page counts when it is soft-dirty and
in memory or swap: a mapping made since the pre-dump reports its never-touched pages
soft-dirty too, and those hold nothing to copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
ENTRY = 8
# Byte 6 of an entry holds bits 48-55; byte 7 bits 56-63.
_SOFT_DIRTY = bytes(1 if b & 0x80 else 0 for b in range(256))
_IN_MEMORY = bytes(1 if b & 0xC0 else 0 for b in range(256))
# One read per slice of a mapping: 16 MiB of pagemap entries covers 8 GiB of memory.
_READ = 16 << 20


def count_dirty(entries: bytes) -> int:
    """The soft-dirty pages in memory or swap among pagemap `entries` (8 bytes each)."""
    soft_dirty = int.from_bytes(entries[6::ENTRY].translate(_SOFT_DIRTY), "little")
    in_memory = int.from_bytes(entries[7::ENTRY].translate(_IN_MEMORY), "little")
    return (soft_dirty & in_memory).bit_count()


def _private_mappings(pid: int, proc: Path) -> list[tuple[int, int]]:
    """The address ranges CRIU copies pages of: private mappings (a shared file mapping's
    pages live in the file) other than the kernel's vsyscall page."""
    ranges = []
    for line in (proc / str(pid) / "maps").read_text().splitlines():
        fields = line.split()
        span, perms = fields[0], fields[1]
        if perms[3] != "p" or line.endswith("[vsyscall]"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        ranges.append((start, end))
    return ranges


def process_dirty_pages(pid: int, proc: Path = Path("/proc")) -> int:
    total = 0
    with open(proc / str(pid) / "pagemap", "rb", buffering=0) as pagemap:
        for start, end in _private_mappings(pid, proc):
            offset, length = start // PAGE * ENTRY, (end - start) // PAGE * ENTRY
            while length > 0:
                chunk = os.pread(pagemap.fileno(), min(length, _READ), offset)
                if not chunk:
                    break
                total += count_dirty(chunk)
                offset, length = offset + len(chunk), length - len(chunk)
    return total


def _parents(proc: Path) -> dict[int, int]:
    parents = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ")".
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def process_tree(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and every process below it: what CRIU dumps for a container's init."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents(proc).items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def dirty_pages(roots: Iterable[int], proc: Path = Path("/proc")) -> int:
    """The pages written since the last pre-dump by the process trees under `roots` (the
    containers' init processes). A process that ends meanwhile counts for nothing."""
    total = 0
    for root in roots:
        for pid in process_tree(root, proc):
            try:
                total += process_dirty_pages(pid, proc)
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


def resident_anonymous_bytes(roots: Iterable[int], proc: Path = Path("/proc")) -> int:
    """The anonymous memory resident in the process trees under `roots` (RssAnon): about
    what a dump of them writes as pages."""
    total = 0
    for root in roots:
        for pid in process_tree(root, proc):
            try:
                status = (proc / str(pid) / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
    return total
