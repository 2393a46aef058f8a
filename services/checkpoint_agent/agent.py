"""The checkpoint agent: one per node, the CRIU side of every migration leaving or arriving.

A migration's steps arrive one at a time (the coordinator sequences them, in the order of
`clm.contracts.protocol`); each is idempotent and serialised per migration, and its outcome
is stored so a repeated command answers again without redoing finished work. Which side of
the move this node plays decides who handles the step: `source.SourceSide` (pre-dump, dump,
abort by rolling back, finalize) or `destination.DestinationSide` (check-cpu, restore, abort
by removing what was restored). Both reach containers only through the `ContainerRuntime`.

The commit point belongs to the coordinator: it comes after a successful restore on the
destination and the network commit. Before it the source can always take the pod back: a
failed dump or transfer rolls back on the source at once (the pod is restored from the local
images into its own network namespace, which removes CRIU's network lock), and `abort` does
the same when the destination fails later. After it, `finalize` removes the source's frozen
copy. The source never runs the pod while the destination does: it restores only on its own
failure or on abort, which the coordinator sends only before the commit point (and after
abort on the destination, which deletes any restored copy there).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from clm.contracts import AgentKind, CheckpointCommand, protocol
from clm.contracts.protocol import StepFailed
from services.checkpoint_agent.config import AgentConfig, CapabilityLookup
from services.checkpoint_agent.destination import DestinationSide
from services.checkpoint_agent.outcomes import Details, Outcome, OutcomeStore
from services.checkpoint_agent.progress import ProgressReporter
from services.checkpoint_agent.restore_handler.server import RestoreHandlerServer
from services.checkpoint_agent.runtime import ContainerRuntime
from services.checkpoint_agent.source import SourceSide

Handler = Callable[[CheckpointCommand], Awaitable[Details]]


class CheckpointAgent:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        capabilities: CapabilityLookup,
        handler: RestoreHandlerServer | None = None,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.config = config
        self.node = config.node
        self.outcomes = OutcomeStore(config.layout)
        self.source = SourceSide(config, runtime, capabilities, self.outcomes, progress)
        self.destination = DestinationSide(config, runtime, capabilities, self.outcomes, handler, progress)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._handlers: dict[protocol.Step, Handler] = {
            protocol.CHECK_CPU: self.destination.check_cpu,
            protocol.AWAIT_CLONE: self.destination.await_clone,
            protocol.PRE_DUMP: self.source.pre_dump,
            protocol.DUMP: self.source.dump,
            protocol.RESTORE: self.destination.restore,
            protocol.ABORT_DESTINATION: self.destination.abort,
            protocol.ABORT_SOURCE: self.source.abort,
            protocol.FINALIZE: self.source.finalize,
            protocol.FILL: self.destination.fill,
        }

    @property
    def expected_transfers(self) -> dict[str, Path]:
        """Offered to the transfer server: migration uid -> where its images go."""
        return self.destination.expected_transfers

    async def execute(self, command: CheckpointCommand) -> Outcome:
        uid = command.migration.uid
        # Each pre-copy round is a step of its own.
        key = str(command.step) if command.round is None else f"{command.step}-{command.round}"
        async with self._locks[uid]:
            stored = self.outcomes.succeeded(uid, key)
            if stored is not None:
                return stored
            started = time.perf_counter()
            try:
                step = protocol.step_of(AgentKind.CHECKPOINT, command)
                handler = self._handlers[step]
                if step is protocol.DUMP:
                    # Its phases carry their own timeouts: cancelling a running CRIU from
                    # here would leave the pod half-dumped behind a rollback.
                    details = await handler(command)
                else:
                    details = await asyncio.wait_for(handler(command), command.timeout_seconds)
                outcome = Outcome(ok=True, details=details)
            except StepFailed as exc:
                outcome = Outcome(ok=False, error=exc.reason)
            except TimeoutError:
                outcome = Outcome(
                    ok=False, error=f"{command.step} did not finish within {command.timeout_seconds:g}s"
                )
            outcome.seconds = time.perf_counter() - started
            self.outcomes.put(uid, key, outcome)
            return outcome


__all__ = ["AgentConfig", "CheckpointAgent"]
