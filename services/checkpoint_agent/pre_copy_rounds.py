"""Pre-copy rounds on the destination: where each round's images go as it arrives, and how
the final dump is stacked on them for the restore.

Round n of a migration arrives as its own transfer, named "<uid>/round-<n>", into
`rounds_in(uid)/<n>/<container>/criu/`. Each round after the first holds only the pages the
pod wrote since the round before, and the final dump only those written since the last
round: CRIU reads the rest through each image directory's `parent` link. The source's links
point into its own directories and do not travel (transfer.py sends regular files only), so
the destination makes its own (relative, as CRIU's are), from the final dump down to round 1.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from pathlib import Path

from services.checkpoint_agent.layout import Layout

ROUND_PREFIX = "/round-"


class ExpectedTransfers(dict[str, Path]):
    """Migration uid -> where its final images go. While a migration is expected, its
    pre-copy rounds ("<uid>/round-<n>") are expected too, each into a directory of its own."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        # Between a transfer's last byte and its images taking their place, and a migration
        # being given up: the receiver's worker thread and the abort step.
        self._settling = threading.Lock()

    def settle(self, key: str, staging: Path, target: Path) -> bool:
        """Put a received transfer in its place, unless its migration was given up while it
        arrived (then the caller drops it). Atomic against `withdraw`."""
        with self._settling:
            if self.get(key) != target:
                return False
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            return True

    def withdraw(self, uid: str) -> None:
        """Expect nothing more for `uid`: a transfer still arriving is dropped when it ends,
        and one that settled before this returned is there for the caller to remove."""
        with self._settling:
            self.pop(uid, None)

    def get(self, key: str, default: Path | None = None) -> Path | None:  # type: ignore[override]
        uid, marker, number = key.partition(ROUND_PREFIX)
        if marker:
            if uid in self and number.isdigit() and int(number) > 0:
                return self.layout.rounds_in(uid) / str(int(number))
            return default
        return super().get(key, default)


def received_rounds(rounds: Path) -> list[int]:
    """The round numbers that arrived whole (a staging directory is not a round)."""
    if not rounds.is_dir():
        return []
    return sorted(int(p.name) for p in rounds.iterdir() if p.is_dir() and p.name.isdigit())


def stack_rounds(rounds: Path, final: Path) -> list[int]:
    """Link each container's final images to the last round, and each round to the one
    before (CRIU's `parent`). Returns the rounds stacked; none when no round arrived (the
    final dump then holds all the memory)."""
    numbers = received_rounds(rounds)
    if not numbers:
        return []
    if numbers != list(range(1, numbers[-1] + 1)):
        raise OSError(f"pre-copy rounds {numbers} arrived with gaps: the stack of images is broken")
    for package in sorted(p for p in final.iterdir() if p.is_dir()):
        chain = [final / package.name / "criu"] + [
            rounds / str(n) / package.name / "criu" for n in reversed(numbers)
        ]
        for upper, lower in itertools.pairwise(chain):
            if not lower.is_dir():
                raise OSError(f"pre-copy round {lower.parent.parent.name} has no images of {package.name}")
            link = upper / "parent"
            if link.is_symlink() or link.exists():
                link.unlink()
            # Relative, as CRIU makes them: the restored task reads its pages after it has
            # entered the container's root, where an absolute path leads nowhere.
            link.symlink_to(os.path.relpath(lower.resolve(), upper.resolve()))
    return numbers
