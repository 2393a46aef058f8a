"""Where the lazily restorable memory sits in a dump's pages images (pure).

A CRIU dump marks the pages that can be restored on demand (anonymous private memory, not
the stack) PE_LAZY in its pagemap, and still writes them into pages-<id>.img when the dump
is a full one. Post-copy sends the images without those pages: the file keeps its size
with holes where they were (the restore on the destination reads the other pages at their
offsets), and the pages come later from the source's page server.

pagemap-<pid>.img: two 32-bit magics, then records of a 32-bit length and a protobuf
message: one PagemapHead {pages_id}, then PagemapEntry {vaddr, compat_nr_pages, in_parent,
flags, nr_pages} each, in the order of the pages file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from services.checkpoint_agent.criu_stats import StatsFormatError, fields

PAGE_SIZE = 4096
PE_PARENT, PE_LAZY, PE_PRESENT = 1 << 0, 1 << 1, 1 << 2


def _records(raw: bytes) -> list[bytes]:
    if len(raw) < 8:
        raise StatsFormatError("too short for a CRIU image")
    out, pos = [], 8
    while pos + 4 <= len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise StatsFormatError("truncated pagemap record")
        out.append(raw[pos : pos + length])
        pos += length
    return out


def _entries(raw: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(pages_id, [(flags, pages)...]) of one pagemap image."""
    records = _records(raw)
    if not records:
        raise StatsFormatError("no pagemap head")
    head = fields(records[0])
    entries = []
    for record in records[1:]:
        entry = fields(record)
        pages = int(entry.get(5, entry.get(2, 0)))
        flags = entry.get(4)
        if not isinstance(flags, int):
            flags = PE_PARENT if entry.get(3) else PE_PRESENT
        entries.append((flags, pages))
    return int(head.get(1, 0)), entries


def holes_of_pagemap(raw: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(pages_id, [(offset, length)...]) of the lazy pages in pages-<pages_id>.img."""
    pages_id, entries = _entries(raw)
    holes: list[tuple[int, int]] = []
    offset = 0
    for flags, pages in entries:
        if not flags & PE_PRESENT:
            continue
        length = pages * PAGE_SIZE
        if flags & PE_LAZY:
            if holes and holes[-1][0] + holes[-1][1] == offset:
                holes[-1] = (holes[-1][0], holes[-1][1] + length)
            else:
                holes.append((offset, length))
        offset += length
    return pages_id, holes


def lazy_holes(image_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """{"pages-<id>.img": holes} for every pagemap in a dump's image directory."""
    found: dict[str, list[tuple[int, int]]] = {}
    for pagemap in sorted(image_dir.glob("pagemap-*.img")):
        pages_id, holes = holes_of_pagemap(pagemap.read_bytes())
        if holes:
            found.setdefault(f"pages-{pages_id}.img", []).extend(holes)
    return found


def pages_by_kind(image_dir: Path) -> dict[str, int]:
    """How many pages a dump's pagemaps hold, by kind ("present", "lazy", "parent"): what
    to say when a post-copy dump turns out to have no lazily restorable memory."""
    counts = {"present": 0, "lazy": 0, "parent": 0}
    for pagemap in sorted(image_dir.glob("pagemap-*.img")):
        for flags, pages in _entries(pagemap.read_bytes())[1]:
            if flags & PE_LAZY:
                counts["lazy"] += pages
            elif flags & PE_PRESENT:
                counts["present"] += pages
            elif flags & PE_PARENT:
                counts["parent"] += pages
    return counts
