"""Drive one live migration through the two node agents over NATS, without a coordinator.

For tests and benchmarks that exercise the agents alone: the steps, their order and the
roles come from `clm.contracts.protocol`, exactly as the coordinator's runner takes them;
real commands are published and the agents' StepResults awaited. There is no Migration
object, no clone pod and no events: those are the coordinator's.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client

from clm.contracts import (
    CheckpointCommand,
    MigrationRef,
    MigrationStrategy,
    NetworkCommand,
    PodRef,
    StepResult,
    protocol,
)
from clm.contracts.protocol import StepFailed
from clm.policy.precopy import ConvergenceRule, Round, next_round
from clm.runtime.agent_client import AgentClient


@dataclass
class MigrationReport:
    ok: bool
    committed: bool
    results: list[StepResult] = field(default_factory=list)
    error: str | None = None
    total_seconds: float = 0.0
    # Pre-copy: each round's result, why the rounds stopped, and the strategy the move ended
    # with (stop-and-copy after a failed round, post-copy where the rounds cannot converge).
    rounds: list[StepResult] = field(default_factory=list)
    verdict: str | None = None
    strategy: MigrationStrategy | None = None

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
    convergence: ConvergenceRule = field(default_factory=ConvergenceRule)
    # The destination's kubelet restores the clone (containerd nodes): before the freeze,
    # wait for its container's creation, as the coordinator does.
    await_clone: bool = False

    def protocol_move(self) -> protocol.Move:
        return protocol.Move(
            migration=self.migration,
            pod=self.pod,
            pod_ip=self.pod_ip,
            source=self.source,
            destination=self.destination,
        )


class Driver:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    @classmethod
    async def connect(cls, url: str) -> Driver:
        return cls(await nats.connect(url))

    async def close(self) -> None:
        await self.nc.close()

    def command(self, move: Move, step: protocol.Step) -> CheckpointCommand | NetworkCommand:
        """`step` of `move` as a one-off command with a new message id: sent twice, it reaches
        the agent twice (which must recognise the repeat) instead of being stored once."""
        command = move.protocol_move().command(
            step, strategy=move.strategy, timeout_seconds=move.step_timeout
        )
        return command.model_copy(update={"message_id": uuid.uuid4().hex})

    async def send(self, command: CheckpointCommand | NetworkCommand, timeout: float) -> StepResult:
        return await AgentClient(self.nc).send(command, timeout)

    async def _send(
        self, move: Move, step: protocol.Step, report: MigrationReport, *, round_: int | None = None
    ) -> StepResult:
        command = move.protocol_move().command(
            step, strategy=report.strategy or move.strategy, timeout_seconds=move.step_timeout, round_=round_
        )
        result = await self.send(command, move.step_timeout + 30)
        report.results.append(result)
        return result

    async def _pre_copy(self, move: Move, report: MigrationReport) -> None:
        """Rounds until the convergence rule stops them, as the coordinator runs them."""
        rounds: list[Round] = []
        while (verdict := next_round(rounds, move.convergence)).another_round:
            result = await self._send(move, protocol.PRE_DUMP, report, round_=len(rounds) + 1)
            if not result.ok:
                report.verdict = f"round {len(rounds) + 1} failed: {result.error}"
                report.strategy = MigrationStrategy.STOP_AND_COPY
                return
            report.rounds.append(result)
            rounds.append(Round.from_details(len(rounds) + 1, result.details, result.duration_seconds))
        report.verdict = verdict.why
        if verdict.stop_and_copy:
            report.strategy = MigrationStrategy.STOP_AND_COPY

    async def _step(self, move: Move, step: protocol.Step, report: MigrationReport) -> StepResult:
        result = await self._send(move, step, report)
        if not result.ok:
            raise StepFailed(
                f"{result.agent} {result.step} on {result.node} failed: {result.error}",
                stage=step.stage,
                result=result,
            )
        return result

    async def migrate(self, move: Move) -> MigrationReport:
        report = MigrationReport(ok=False, committed=False, strategy=move.strategy)
        started = time.perf_counter()
        try:
            for step in protocol.before_commit(move.strategy):
                if step is protocol.PRE_DUMP:
                    await self._pre_copy(move, report)
                    continue
                if step is protocol.DUMP and move.await_clone:
                    await self._step(move, protocol.AWAIT_CLONE, report)
                await self._step(move, step, report)
        except (StepFailed, TimeoutError) as exc:
            report.error = exc.reason if isinstance(exc, StepFailed) else str(exc)
            await self.abort(move, report)
            report.total_seconds = time.perf_counter() - started
            return report
        report.committed = protocol.committed_at_resume(report.strategy or move.strategy)
        for step in protocol.COMMIT:
            await self._step(move, step, report)
        report.committed = True
        failure = None
        for step in protocol.after_commit(report.strategy or move.strategy):
            try:
                await self._step(move, step, report)
            except StepFailed as exc:
                if step is not protocol.FILL:
                    raise
                # Past the commit point: the move failed, the source is cleaned all the same.
                failure = exc.reason
        report.ok, report.error = failure is None, failure
        report.total_seconds = time.perf_counter() - started
        return report

    async def abort(self, move: Move, report: MigrationReport) -> None:
        """Roll back in the protocol's order (the destination's copy first)."""
        for step in protocol.ROLLBACK:
            try:
                await self._send(move, step, report)
            except TimeoutError as exc:
                report.error = f"{report.error}; abort: {exc}"
