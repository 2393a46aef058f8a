import pytest

from services.checkpoint_agent.criu_stats import StatsFormatError, parse_stats, read_stats

# A stats-dump image CRIU 4.2.1 wrote for a 256 MiB runc container on this project's CI.
RECORDED = bytes.fromhex(
    "4059105506330957290000000a2708c80310ffca1c18ffc41920d3f71728a88904300038de8804"
    "4000480050085808600068007000"
)


def test_recorded_dump_stats() -> None:
    stats = parse_stats(RECORDED)
    assert stats["freezing_seconds"] == pytest.approx(0.000456)
    assert stats["frozen_seconds"] == pytest.approx(0.468351)
    assert stats["memdump_seconds"] == pytest.approx(0.418431)
    assert stats["memwrite_seconds"] == pytest.approx(0.392147)
    assert stats["pages_written"] == 66654
    assert stats["pages_scanned"] == 66728


def test_restore_stats() -> None:
    # StatsEntry{restore: {forking_time: 1500, restore_time: 250000, pages_restored: 7}}
    body = bytes([0x18, 0xDC, 0x0B, 0x20, 0x90, 0xA1, 0x0F, 0x28, 0x07])
    entry = bytes([0x12, len(body)]) + body
    raw = b"\0" * 8 + len(entry).to_bytes(4, "little") + entry
    assert parse_stats(raw) == {"forking_seconds": 0.0015, "restore_seconds": 0.25, "pages_restored": 7}


def test_truncated_image_is_an_error_and_missing_file_is_empty(tmp_path) -> None:
    with pytest.raises(StatsFormatError):
        parse_stats(RECORDED[:20])
    assert read_stats(tmp_path / "stats-dump") == {}
