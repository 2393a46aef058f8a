"""Where the lazily restorable memory sits in a dump's pages images (pure).

A CRIU dump marks the pages that can be restored on demand (anonymous private memory, not
the stack) PE_LAZY in its pagemap. A full dump writes them into pages-<id>.img too
(PE_LAZY | PE_PRESENT); a lazy dump (post-copy) leaves them out (PE_LAZY alone) and serves
them from the frozen tasks. A rollback before the commit fetches them and writes the lazy
dump out as a full one (page_server_wire.take_back, `as_full_pagemap`).

pagemap-<pid>.img: two 32-bit magics, then records of a 32-bit length and a protobuf
message: one PagemapHead {pages_id}, then PagemapEntry {vaddr, compat_nr_pages, in_parent,
flags, nr_pages} each, in the order of the pages file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from services.checkpoint_agent.criu_stats import StatsFormatError, _varint, fields

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


def _ordered_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message's fields in order: (number, wire type, value)."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, wire, data[pos : pos + length]))
            pos += length
        else:
            raise StatsFormatError(f"unexpected wire type {wire}")
    return out


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _encode(message: list[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray()
    for number, wire, value in message:
        out += _encode_varint(number << 3 | wire)
        if isinstance(value, int):
            out += _encode_varint(value)
        else:
            out += _encode_varint(len(value)) + value
    return bytes(out)


def lazy_ranges(raw: bytes) -> tuple[int, list[tuple[int, int, bool]]]:
    """(pages_id, [(vaddr, pages, in_pages_file)...]) of a lazy dump's pagemap, in the pages
    file's order: what a lazy dump kept out of pages-<id>.img (in_pages_file false) is what
    its page server serves."""
    records = _records(raw)
    if not records:
        raise StatsFormatError("no pagemap head")
    pages_id = int(fields(records[0]).get(1, 0))
    out = []
    for record in records[1:]:
        entry = fields(record)
        pages = int(entry.get(5, entry.get(2, 0)))
        flags = entry.get(4)
        if not isinstance(flags, int):
            flags = PE_PARENT if entry.get(3) else PE_PRESENT
        if flags & PE_PARENT:
            continue  # in a parent image, not this dump's file
        out.append((int(entry.get(1, 0)), pages, bool(flags & PE_PRESENT)))
    return pages_id, out


def as_full_pagemap(raw: bytes) -> bytes:
    """A lazy dump's pagemap once its lazy pages were written into the pages file: each lazy
    entry marked present too, as a full dump marks them (so a plain restore reads them)."""
    records = _records(raw)
    out = bytearray(raw[:8])
    for index, record in enumerate(records):
        written = record
        if index:
            message = _ordered_fields(record)
            flags = next((v for n, _, v in message if n == 4), None)
            if isinstance(flags, int) and flags & PE_LAZY and not flags & PE_PRESENT:
                written = _encode([(n, w, flags | PE_PRESENT if n == 4 else v) for n, w, v in message])
        out += struct.pack("<I", len(written)) + written
    return bytes(out)
