"""Watchers and the change log they resume from."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.kube_emulator.store import Entry

Obj = dict[str, Any]


def anything(_: Any) -> bool:
    return True


@dataclass(slots=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: tuple[str, str]
    namespace: str
    entry: Entry
    previous: Obj | None


@dataclass(eq=False)
class Watcher:
    key: tuple[str, str]
    namespace: str | None
    labels: Callable[[Mapping[str, str]], bool]
    fields: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[tuple[str, Entry] | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj | None) -> bool:
        return (
            obj is not None
            and self.labels((obj.get("metadata") or {}).get("labels") or {})
            and self.fields(obj)
        )

    def offer(self, change: Change) -> None:
        if self.namespace and change.namespace != self.namespace:
            return
        now_matches = change.type != "DELETED" and self.matches(change.entry.obj)
        was = self.matches(change.previous) if change.previous is not None else False
        if change.type == "DELETED":
            if self.matches(change.entry.obj):
                self.queue.put_nowait(("DELETED", change.entry))
        elif now_matches and (was or change.type == "ADDED"):
            self.queue.put_nowait((change.type, change.entry))
        elif now_matches:
            self.queue.put_nowait(("ADDED", change.entry))  # began to match the selector
        elif was:
            self.queue.put_nowait(("DELETED", change.entry))  # stopped matching
