"""A step's progress, from the worker thread moving the bytes to NATS, a few times a second
at most: the coordinator turns it into the Migration's status (`status.progress`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from clm.contracts import AgentKind, CheckpointCommand, StepProgress

log = logging.getLogger(__name__)

Announce = Callable[[StepProgress], Awaitable[None]]


class Report(Protocol):
    """Called with the bytes done so far, from any thread; `last` is sent whatever the rate."""

    def __call__(self, done: int, /, *, last: bool = False) -> None: ...


def _ignore(_done: int, /, *, last: bool = False) -> None:
    return None


class ProgressReporter:
    def __init__(self, announce: Announce | None, *, node: str, every_seconds: float = 0.5) -> None:
        self.announce, self.node, self.every = announce, node, every_seconds
        self._sending: set[asyncio.Task[None]] = set()

    def for_step(self, command: CheckpointCommand, *, total: int) -> Report:
        """A report function for one step moving `total` bytes (0: unknown). It drops what
        comes sooner than `every_seconds` after the last it sent, except the last byte."""
        if self.announce is None:
            return _ignore
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        sent_at = [float("-inf")]

        def report(done: int, /, *, last: bool = False) -> None:
            now = time.monotonic()
            if now - sent_at[0] < self.every and done != total and not last:
                return
            sent_at[0] = now
            message = StepProgress(
                namespace=command.migration.namespace,
                migration=command.migration.name,
                migration_uid=command.migration.uid,
                agent=AgentKind.CHECKPOINT,
                node=self.node,
                step=str(command.step),
                round=command.round,
                bytes_done=done,
                bytes_total=total,
                elapsed_seconds=round(now - started, 3),
            )
            loop.call_soon_threadsafe(self._start_sending, message)

        return report

    def _start_sending(self, message: StepProgress) -> None:
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, message: StepProgress) -> None:
        assert self.announce is not None
        try:
            await self.announce(message)
        except Exception as exc:  # - progress is best effort; the step goes on
            log.debug("progress not sent: %r", exc)
