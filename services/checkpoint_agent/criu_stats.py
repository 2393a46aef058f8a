"""CRIU's own phase timings, read from the `stats-dump` / `stats-restore` images it writes.

The images hold one protobuf message (StatsEntry) after two 32-bit magics and a 32-bit
length. Only varint fields occur, so a few lines of decoding replace a protobuf runtime.
Times are in microseconds in the image; returned in seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path

# stats.proto: dump_stats_entry / restore_stats_entry field numbers.
DUMP_FIELDS = {
    1: "freezing_seconds",
    2: "frozen_seconds",
    3: "memdump_seconds",
    4: "memwrite_seconds",
    5: "pages_scanned",
    6: "pages_skipped_parent",
    7: "pages_written",
    9: "pages_lazy",
}
RESTORE_FIELDS = {3: "forking_seconds", 4: "restore_seconds", 5: "pages_restored"}


class StatsFormatError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise StatsFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> dict[int, int | bytes]:
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            out[number] = data[pos : pos + length]
            pos += length
        else:
            raise StatsFormatError(f"unexpected wire type {wire}")
    return out


def parse_stats(raw: bytes) -> dict[str, float | int]:
    """StatsEntry → {"frozen_seconds": ..., "pages_written": ...}."""
    if len(raw) < 12:
        raise StatsFormatError("too short for a CRIU image")
    (length,) = struct.unpack_from("<I", raw, 8)
    entry = fields(raw[12 : 12 + length])
    result: dict[str, float | int] = {}
    for number, names in ((1, DUMP_FIELDS), (2, RESTORE_FIELDS)):
        body = entry.get(number)
        if not isinstance(body, bytes):
            continue
        for field_number, value in fields(body).items():
            name = names.get(field_number)
            if name is not None and isinstance(value, int):
                result[name] = value / 1e6 if name.endswith("_seconds") else value
    return result


def read_stats(path: Path) -> dict[str, float | int]:
    """The parsed stats image, or {} when CRIU did not write one."""
    try:
        return parse_stats(path.read_bytes())
    except (OSError, StatsFormatError):
        return {}


def images_complete(image_dir: Path) -> bool:
    """CRIU finished the dump into `image_dir` (its log says so as its last word)."""
    log = image_dir / "dump.log"
    return log.is_file() and "Dumping finished successfully" in log.read_text(errors="replace")[-4096:]
