"""The layers are enforced by the build: a copy of this checkout with one import across a
layer the wrong way fails `pants dependencies` with the rule that forbids it, and the same
copy with an allowed import passes. Pants runs for real, as `./pants` would for a user."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("CLM_REPO_ROOT") or Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip(f"needs the git checkout ({ROOT} has none): run under ./pants test or from the repo")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copy = tmp_path_factory.mktemp("checkout")
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def dependencies(checkout: Path, path: str, source: str) -> subprocess.CompletedProcess[str]:
    (checkout / path).write_text(source)
    try:
        return subprocess.run(
            ["./pants", "dependencies", path],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        (checkout / path).unlink()


@pytest.mark.parametrize(
    ("path", "wrong", "rule"),
    [
        # The policy core must not reach the runtime (no I/O in it).
        ("libs/clm/policy/zz_layer.py", "from clm.runtime import settings", "libs/clm/policy/BUILD[!*]"),
        # A service must not import another one: they talk through NATS and the API.
        ("services/labeler/zz_layer.py", "from services.coordinator import kube", "services/BUILD[!*]"),
        # Libraries never import services.
        (
            "libs/clm/runtime/zz_layer.py",
            "from services.checkpoint_agent import runc",
            "libs/clm/runtime/BUILD[!*]",
        ),
    ],
)
def test_an_import_across_a_layer_fails_the_build(checkout: Path, path: str, wrong: str, rule: str) -> None:
    result = dependencies(checkout, path, f"{wrong}  # noqa: F401\n")
    assert result.returncode != 0, result.stdout
    assert "DependencyRuleActionDeniedError" in result.stderr, result.stderr[-2000:]
    assert rule in result.stderr, result.stderr[-2000:]


def test_an_import_down_the_layers_passes(checkout: Path) -> None:
    result = dependencies(
        checkout, "services/labeler/zz_layer.py", "from clm.policy import names  # noqa: F401\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "libs/clm/policy/names.py" in result.stdout
