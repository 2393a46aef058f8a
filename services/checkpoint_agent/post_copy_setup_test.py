from __future__ import annotations

from pathlib import Path

from services.checkpoint_agent.post_copy_setup import ensure_pipe_size, post_copy_problem


def test_a_low_pipe_limit_is_raised(tmp_path: Path) -> None:
    limit = tmp_path / "pipe-max-size"
    limit.write_text("1048576\n")
    assert ensure_pipe_size(limit, 4 << 20) is None
    assert limit.read_text() == str(4 << 20)


def test_a_high_limit_is_left_alone(tmp_path: Path) -> None:
    limit = tmp_path / "pipe-max-size"
    limit.write_text("8388608\n")
    assert ensure_pipe_size(limit, 4 << 20) is None
    assert limit.read_text() == "8388608\n"


def test_a_limit_that_cannot_be_raised_says_why_and_what_to_do() -> None:
    # A read-only sysctl (mode 0444): the kernel refuses the write even to root.
    read_only = Path("/proc/sys/kernel/ngroups_max")
    current = int(read_only.read_text())
    problem = ensure_pipe_size(read_only, current + 1)
    assert problem is not None and f"is {current} and cannot be raised" in problem
    assert "set the sysctl on the node" in problem


def test_post_copy_needs_userfaultfd_the_pipe_limit_and_the_relay() -> None:
    assert post_copy_problem(userfaultfd=True, pipe_problem=None, pages_address="10.0.0.1:7") is None
    assert "userfaultfd" in (
        post_copy_problem(userfaultfd=False, pipe_problem=None, pages_address="a:1") or ""
    )
    assert post_copy_problem(userfaultfd=True, pipe_problem="low", pages_address="a:1") == "low"
    assert "relay" in (post_copy_problem(userfaultfd=True, pipe_problem=None, pages_address=None) or "")
