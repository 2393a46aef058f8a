from pathlib import Path

from tools.setup.junit_summary import summarise


def test_counts_passed_failed_and_skipped_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1"/></testsuites>'
    )
    (tmp_path / "b.xml").write_text('<testsuite tests="3" failures="0" errors="0" skipped="0"/>')
    assert summarise(tmp_path) == (5, 2, 1)


def test_empty_directory_counts_nothing(tmp_path: Path) -> None:
    assert summarise(tmp_path) == (0, 0, 0)
