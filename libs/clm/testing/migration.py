"""Drive one live migration through the two node agents over NATS, step by step.

This is the agents' side of the protocol in the order the coordinator uses it, for tests,
benchmarks and the sandbox before the coordinator exists; it publishes real commands and
waits for the agents' StepResults.

    network prepare (destination)      pod netns with its IP, unreachable
    check-cpu (destination)            before any freeze
    dump (source)                      lock, freeze, dump, stream; rolls back itself on failure
    restore (destination)              into the prepared netns
    network commit (source, then destination)        <- the commit point
    finalize (source), network release (source)

A failure before the commit point aborts: destination checkpoint abort, source
checkpoint abort (the pod runs again on the source), destination network abort.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client

from clm.contracts import (
    CheckpointCommand,
    CheckpointStep,
    MigrationRef,
    MigrationStrategy,
    NetworkCommand,
    NetworkStep,
    PodRef,
    StepResult,
)
from clm.runtime.agent_client import AgentClient


class StepError(RuntimeError):
    def __init__(self, result: StepResult) -> None:
        super().__init__(f"{result.agent} {result.step} on {result.node} failed: {result.error}")
        self.result = result


@dataclass
class MigrationReport:
    ok: bool
    committed: bool
    results: list[StepResult] = field(default_factory=list)
    error: str | None = None
    total_seconds: float = 0.0

    def result(self, agent: str, step: str) -> StepResult | None:
        return next((r for r in self.results if r.agent == agent and r.step == step), None)


@dataclass
class Move:
    pod: PodRef
    pod_ip: str
    source: str
    destination: str
    migration: MigrationRef = field(
        default_factory=lambda: MigrationRef(
            namespace="default", name=f"m-{uuid.uuid4().hex[:8]}", uid=str(uuid.uuid4())
        )
    )
    strategy: MigrationStrategy = MigrationStrategy.STOP_AND_COPY
    step_timeout: float = 300.0


class Driver:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    @classmethod
    async def connect(cls, url: str) -> Driver:
        return cls(await nats.connect(url))

    async def close(self) -> None:
        await self.nc.close()

    async def send(self, command: CheckpointCommand | NetworkCommand, timeout: float) -> StepResult:
        return await AgentClient(self.nc).send(command, timeout)

    def _checkpoint(self, move: Move, node: str, step: CheckpointStep) -> CheckpointCommand:
        return CheckpointCommand(
            node=node,
            step=step,
            migration=move.migration,
            pod=move.pod,
            source_node=move.source,
            destination_node=move.destination,
            strategy=move.strategy,
            timeout_seconds=move.step_timeout,
        )

    def _network(self, move: Move, node: str, step: NetworkStep) -> NetworkCommand:
        return NetworkCommand(
            node=node,
            step=step,
            migration=move.migration,
            pod=move.pod,
            pod_ip=move.pod_ip,
            source_node=move.source,
            destination_node=move.destination,
        )

    async def migrate(self, move: Move) -> MigrationReport:
        report = MigrationReport(ok=False, committed=False)
        started = time.perf_counter()
        wait = move.step_timeout + 30

        async def step(command: CheckpointCommand | NetworkCommand) -> StepResult:
            result = await self.send(command, wait)
            report.results.append(result)
            if not result.ok:
                raise StepError(result)
            return result

        try:
            await step(self._network(move, move.destination, NetworkStep.PREPARE))
            await step(self._checkpoint(move, move.destination, CheckpointStep.CHECK_CPU))
            await step(self._checkpoint(move, move.source, CheckpointStep.DUMP))
            await step(self._checkpoint(move, move.destination, CheckpointStep.RESTORE))
        except (StepError, TimeoutError) as exc:
            report.error = str(exc)
            await self.abort(move, report)
            report.total_seconds = time.perf_counter() - started
            return report
        # The commit point: from here the move is only completed, never undone.
        await step(self._network(move, move.source, NetworkStep.COMMIT))
        await step(self._network(move, move.destination, NetworkStep.COMMIT))
        report.committed = True
        await step(self._checkpoint(move, move.source, CheckpointStep.FINALIZE))
        await step(self._network(move, move.source, NetworkStep.RELEASE))
        report.ok = True
        report.total_seconds = time.perf_counter() - started
        return report

    async def abort(self, move: Move, report: MigrationReport) -> None:
        """Undo in the order that never leaves two copies: the destination's first."""
        wait = move.step_timeout + 30
        for command in (
            self._checkpoint(move, move.destination, CheckpointStep.ABORT),
            self._checkpoint(move, move.source, CheckpointStep.ABORT),
            self._network(move, move.destination, NetworkStep.ABORT),
        ):
            try:
                report.results.append(await self.send(command, wait))
            except TimeoutError as exc:
                report.error = f"{report.error}; abort: {exc}"
