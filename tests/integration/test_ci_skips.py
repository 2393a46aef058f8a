"""A skipped test fails the run under CI=true and stays a skip elsewhere (a real pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_skipping_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        "from tests.integration.ci_skips import pytest_runtest_makereport  # noqa: F401\n"
    )
    (tmp_path / "test_needs_root.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='network namespaces need root')\n"
        "def test_it() -> None:\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "libs"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_a_skip_fails_under_ci(tmp_path: Path) -> None:
    result = run_skipping_test(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=true" in result.stdout and "network namespaces need root" in result.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path: Path) -> None:
    result = run_skipping_test(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
