import pytest

from services.checkpoint_agent.probe import normalise_arch, parse_version, version_problem


def test_parse_version_reads_criu_output() -> None:
    assert parse_version("Version: 4.2.1\nGitID: v4.2.1\n") == "4.2.1"
    assert parse_version("nonsense") is None


@pytest.mark.parametrize(
    ("version", "ok"),
    [("4.2.1", True), ("4.3", True), ("5.0.0", True), ("4.1.1", False), ("3.17.1", False), (None, False)],
)
def test_version_problem_requires_4_2(version: str | None, ok: bool) -> None:
    assert (version_problem(version) is None) is ok


def test_arch_uses_kubernetes_names() -> None:
    assert normalise_arch("x86_64") == "amd64"
    assert normalise_arch("aarch64") == "arm64"
