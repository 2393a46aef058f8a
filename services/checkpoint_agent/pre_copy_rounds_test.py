from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.pre_copy_rounds import ExpectedTransfers, stack_rounds


def images(root: Path, container: str) -> Path:
    path = root / container / "criu"
    path.mkdir(parents=True)
    (path / "pages-1.img").write_bytes(b"x")
    return path


def test_rounds_are_expected_only_with_their_migration(tmp_path: Path) -> None:
    layout = Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    expected = ExpectedTransfers(layout)
    assert expected.get("m1/round-1") is None
    expected["m1"] = layout.incoming("m1")
    assert expected.get("m1") == layout.incoming("m1")
    assert expected.get("m1/round-2") == layout.rounds_in("m1") / "2"
    assert expected.get("m1/round-0") is None
    assert expected.get("m1/round-x") is None
    assert expected.get("m2/round-1") is None


def test_the_final_dump_stacks_on_the_last_round_and_each_round_on_the_one_before(tmp_path: Path) -> None:
    rounds, final = tmp_path / "rounds", tmp_path / "final"
    for n in (1, 2, 3):
        images(rounds / str(n), "server")
    top = images(final, "server")
    assert stack_rounds(rounds, final) == [1, 2, 3]

    def round_(n: int) -> Path:
        return (rounds / str(n) / "server" / "criu").resolve()

    assert (top / "parent").resolve() == round_(3)
    assert (round_(3) / "parent").resolve() == round_(2)
    assert (round_(2) / "parent").resolve() == round_(1)
    assert not (round_(1) / "parent").exists()
    assert not Path(os.readlink(top / "parent")).is_absolute()
    # Again (a repeated restore): the same links.
    assert stack_rounds(rounds, final) == [1, 2, 3]


def test_no_rounds_leave_the_final_dump_whole(tmp_path: Path) -> None:
    top = images(tmp_path / "final", "server")
    assert stack_rounds(tmp_path / "rounds", tmp_path / "final") == []
    assert not (top / "parent").exists()


def test_a_gap_in_the_rounds_is_refused(tmp_path: Path) -> None:
    rounds, final = tmp_path / "rounds", tmp_path / "final"
    for n in (1, 3):
        images(rounds / str(n), "server")
    images(final, "server")
    with pytest.raises(OSError, match="gaps"):
        stack_rounds(rounds, final)


def test_a_round_without_a_container_is_refused(tmp_path: Path) -> None:
    rounds, final = tmp_path / "rounds", tmp_path / "final"
    images(rounds / "1", "server")
    images(final, "server")
    images(final, "sidecar")
    with pytest.raises(OSError, match="sidecar"):
        stack_rounds(rounds, final)


def test_a_transfer_settles_only_while_its_migration_is_expected(tmp_path: Path) -> None:
    layout = Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    expected = ExpectedTransfers(layout)
    target = layout.incoming("uid-1")
    target.parent.mkdir(parents=True)  # the receiver stages beside the target
    expected["uid-1"] = target

    def staged(name: str) -> Path:
        staging = tmp_path / name
        (staging / "criu").mkdir(parents=True)
        return staging

    assert expected.settle("uid-1", staged("first"), target) and (target / "criu").is_dir()
    assert expected.settle("uid-1", staged("again"), target), "a repeated dump replaces the images"
    expected.withdraw("uid-1")  # an abort: the images that arrive after it are dropped
    late = staged("late")
    assert not expected.settle("uid-1", late, target)
    assert late.exists(), "the caller drops what did not settle"
