"""Where a migration is, for its status (`status.progress`) and `kubectl get migrations -w`
(pure logic: the coordinator feeds it steps and the agents' progress, with the time).

- `percent` rises and never goes back. Each step owns a share of 0-100: the transfers by
  their bytes, the others at their start. Pre-copy rounds share their span, each round half
  of what is left of it: rounds have no known count.
- bytes: the current transfer's done and total, and all the bytes moved so far.
- the rate is the current transfer's, and `etaSeconds` what that transfer has left at it.
- `frozenSeconds`: from the final dump's start (the freeze) to the destination's resume.
- Post-copy moves most of the memory after the resume (the fill): the fill holds most of the
  span, and its bytes are the pages already on the destination (`pagesOnDestination`) out of
  those the dump left on the source (`expect_on_demand`).
- It is written at most every `every_seconds`, so the API is not flooded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# A step (its stage, as in status.failedStage: the agents' progress names the same) ->
# (percent at its start, percent at its end).
SPANS: dict[str, tuple[float, float]] = {
    "network-prepare": (0.0, 2.0),
    "check-cpu": (2.0, 4.0),
    "pre-dump": (4.0, 45.0),
    "dump": (45.0, 90.0),
    "restore": (90.0, 96.0),
    "network-commit": (96.0, 98.0),
    "fill": (98.0, 99.0),
    "finalize": (98.0, 99.0),
    "network-release": (99.0, 99.5),
}
# Post-copy: the dump carries the state without the memory, the fill brings the memory.
POST_COPY_SPANS: dict[str, tuple[float, float]] = {
    **SPANS,
    "dump": (45.0, 55.0),
    "restore": (55.0, 60.0),
    "network-commit": (60.0, 62.0),
    "fill": (62.0, 99.0),
}
PAGE = 4096
FILL = "fill"
# Steps after which the pod runs on the destination (the end of the freeze).
RESUMED_AFTER = "restore"
FREEZE_BEGINS = "dump"


@dataclass
class ProgressView:
    every_seconds: float = 2.0
    step: str = ""
    round: int | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    # Bytes of the transfers already finished.
    bytes_before: int = 0
    rate: float = 0.0
    percent: float = 0.0
    dirty_rate: float | None = None
    frozen_since: float | None = None
    frozen_seconds: float | None = None
    post_copy: bool = False
    # Post-copy: the memory the dump left on the source, which the fill brings over.
    on_demand: int = 0
    _written_at: float = field(default=-math.inf, repr=False)

    def begin(self, step: str, now: float, *, round_: int | None = None, post_copy: bool = False) -> None:
        """The coordinator sent `step` (round `round_` of pre-copy) of a move whose strategy
        is now post-copy or not."""
        self.bytes_before += self.bytes_done
        self.step, self.round, self.post_copy = step, round_, post_copy
        self.bytes_done = 0
        self.bytes_total = self.on_demand if step == FILL else 0
        self.rate = 0.0
        if step == FREEZE_BEGINS and self.frozen_since is None:
            self.frozen_since = now
        self._rise(self._span_start())

    def ended(self, step: str, now: float, *, moved: int = 0) -> None:
        """`step` answered ok, having moved `moved` bytes (its answer's count: the last
        progress message may come after the answer, and is then not heard)."""
        if step == self.step and moved > self.bytes_done:
            self.bytes_done, self.bytes_total = moved, max(self.bytes_total, moved)
        if step == RESUMED_AFTER and self.frozen_since is not None and self.frozen_seconds is None:
            self.frozen_seconds = now - self.frozen_since
        self._rise(self._span()[1] if step != "pre-dump" else self._round_end())

    def heard(
        self, *, step: str, round_: int | None, done: int, total: int, elapsed: float, now: float
    ) -> bool:
        """An agent's progress. True when the status is due a write."""
        if step != self.step or round_ != self.round or done < self.bytes_done:
            return False  # an earlier step's, or out of order
        self.bytes_done, self.bytes_total = done, max(total, done, self.bytes_total)
        self.rate = done / elapsed if elapsed > 0 else 0.0
        if self.bytes_total:
            start = self._span_start()
            end = self._round_end() if step == "pre-dump" else self._span()[1]
            self._rise(start + (end - start) * done / self.bytes_total)
        return now - self._written_at >= self.every_seconds

    def finished(self) -> None:
        self._rise(100.0)

    def written(self, now: float) -> None:
        """A write of its own went to the API: the next is due `every_seconds` later."""
        self._written_at = now

    def status(self, now: float) -> dict[str, Any]:
        """`status.progress`."""
        shown: dict[str, Any] = {
            "step": self.step if self.round is None else f"{self.step} round {self.round}",
            "percent": round(self.percent, 1),
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
            "bytesMoved": self.bytes_before + self.bytes_done,
        }
        if self.rate > 0:
            shown["bytesPerSecond"] = int(self.rate)
            if self.bytes_total > self.bytes_done:
                shown["etaSeconds"] = round((self.bytes_total - self.bytes_done) / self.rate, 1)
        if self.round is not None:
            shown["round"] = self.round
        if self.step == FILL:
            shown["pagesOnDestination"] = self.bytes_done // PAGE
            shown["pagesTotal"] = self.bytes_total // PAGE
        if self.dirty_rate is not None:
            shown["dirtyBytesPerSecond"] = int(self.dirty_rate)
        frozen = self.frozen_seconds
        if frozen is None and self.frozen_since is not None:
            frozen = now - self.frozen_since
        if frozen is not None:
            shown["frozenSeconds"] = round(frozen, 3)
        return shown

    def _span(self) -> tuple[float, float]:
        spans = POST_COPY_SPANS if self.post_copy else SPANS
        return spans.get(self.step, (self.percent, self.percent))

    def _span_start(self) -> float:
        start, end = self._span()
        if self.step == "pre-dump" and self.round:
            # Round n starts where round n-1 ended: half of what is left each time.
            return end - (end - start) / 2 ** (self.round - 1)
        return start

    def _round_end(self) -> float:
        start, end = self._span()
        return end - (end - start) / 2 ** (self.round or 1)

    def _rise(self, percent: float) -> None:
        self.percent = max(self.percent, min(percent, 100.0))
