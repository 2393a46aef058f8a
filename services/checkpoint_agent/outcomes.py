"""Each step's outcome, kept per migration on disk: a repeated command (a redelivery, a
resumed coordinator) is answered from here instead of redoing finished work."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from services.checkpoint_agent.layout import Layout

Details = dict[str, float | int | str | bool]


@dataclass
class Outcome:
    ok: bool
    error: str | None = None
    details: Details = field(default_factory=dict)
    seconds: float = 0.0


class OutcomeStore:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def _path(self, uid: str, step: str) -> Path:
        return self.layout.results(uid) / f"{step}.json"

    def succeeded(self, uid: str, step: str) -> Outcome | None:
        """The stored outcome of `step` if it succeeded (a failed step is tried again)."""
        path = self._path(uid, step)
        if not path.exists():
            return None
        previous = json.loads(path.read_text())
        if not previous["ok"]:
            return None
        return Outcome(ok=True, details={**previous["details"], "repeated": True})

    def done(self, uid: str, step: str) -> bool:
        return self._path(uid, step).exists()

    def put(self, uid: str, step: str, outcome: Outcome) -> None:
        path = self._path(uid, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ok": outcome.ok, "error": outcome.error, "details": outcome.details}))

    def forget(self, uid: str, *steps: str) -> None:
        for step in steps:
            self._path(uid, step).unlink(missing_ok=True)
