from __future__ import annotations

import struct
from pathlib import Path

from services.checkpoint_agent.pagemap import PE_LAZY, PE_PARENT, PE_PRESENT, lazy_holes, pages_by_kind


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


def test_lazy_pages_become_holes_at_their_offsets_in_the_pages_file(tmp_path: Path) -> None:
    lazy = PE_LAZY | PE_PRESENT
    (tmp_path / "pagemap-1.img").write_bytes(
        pagemap(
            7,
            [
                (0x400000, 2, PE_PRESENT),  # code: restored with the process
                (0x600000, 3, lazy),  # heap: comes on demand
                (0x700000, 1, lazy),  # adjacent: one hole
                (0x800000, 5, PE_PARENT),  # in a parent image: not in this file
                (0x900000, 1, PE_PRESENT),  # the stack
                (0xA00000, 4, lazy),
            ],
        )
    )
    assert lazy_holes(tmp_path) == {"pages-7.img": [(2 * 4096, 4 * 4096), (7 * 4096, 4 * 4096)]}


def test_a_dump_without_lazy_pages_has_no_holes(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(pagemap(1, [(0x400000, 2, PE_PRESENT)]))
    assert lazy_holes(tmp_path) == {}


def test_pages_are_counted_by_kind_across_pagemaps(tmp_path: Path) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(
        pagemap(1, [(0x400000, 2, PE_PRESENT), (0x600000, 3, PE_LAZY | PE_PRESENT)])
    )
    (tmp_path / "pagemap-2.img").write_bytes(pagemap(2, [(0x400000, 5, PE_PARENT)]))
    assert pages_by_kind(tmp_path) == {"present": 2, "lazy": 3, "parent": 5}
