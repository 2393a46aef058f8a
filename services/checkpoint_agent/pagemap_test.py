from __future__ import annotations

import struct
from pathlib import Path

from services.checkpoint_agent.pagemap import (
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    as_full_pagemap,
    lazy_ranges,
    pages_by_kind,
)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def message(*pairs: tuple[int, int]) -> bytes:
    return b"".join(varint(number << 3) + varint(value) for number, value in pairs)


def pagemap(pages_id: int, entries: list[tuple[int, int, int]]) -> bytes:
    records = [message((1, pages_id))] + [
        message((1, vaddr), (2, pages), (4, flags), (5, pages)) for vaddr, pages, flags in entries
    ]
    return struct.pack("<II", 0x54564319, 0x56084025) + b"".join(
        struct.pack("<I", len(r)) + r for r in records
    )


def test_a_lazy_dumps_ranges_say_which_pages_its_file_holds() -> None:
    raw = pagemap(
        7,
        [
            (0x400000, 2, PE_PRESENT),  # code: in the pages file
            (0x600000, 3, PE_LAZY),  # heap: served by the page server
            (0x800000, 5, PE_PARENT),  # in a parent image: not this dump's
            (0x900000, 1, PE_PRESENT),  # the stack
        ],
    )
    assert lazy_ranges(raw) == (7, [(0x400000, 2, True), (0x600000, 3, False), (0x900000, 1, True)])


def test_the_full_pagemap_marks_lazy_entries_present_and_keeps_the_rest() -> None:
    raw = pagemap(7, [(0x400000, 2, PE_PRESENT), (0x600000, 300, PE_LAZY), (0x800000, 5, PE_PARENT)])
    full = as_full_pagemap(raw)
    assert full == pagemap(
        7, [(0x400000, 2, PE_PRESENT), (0x600000, 300, PE_LAZY | PE_PRESENT), (0x800000, 5, PE_PARENT)]
    )
    assert lazy_ranges(full)[1] == [(0x400000, 2, True), (0x600000, 300, True)]
    assert as_full_pagemap(full) == full  # a full dump's stays as it is


def test_pages_are_counted_by_kind_across_pagemaps(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(
        pagemap(1, [(0x400000, 2, PE_PRESENT), (0x600000, 3, PE_LAZY | PE_PRESENT)])
    )
    (tmp_path / "pagemap-2.img").write_bytes(pagemap(2, [(0x400000, 5, PE_PARENT)]))
    assert pages_by_kind(tmp_path) == {"present": 2, "lazy": 3, "parent": 5}
