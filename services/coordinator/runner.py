"""One migration, driven from whatever its status says to Finished or Failed.

Level-based: the Migration's status is the state. The steps, their order and which node
runs each are `clm.contracts.protocol`'s; every step is an idempotent command to a node
agent, so a runner started on a half-done migration (after a coordinator crash, or by
another replica) repeats the step it was on and goes on; events are keyed, so none is
recorded twice. The commit point is `status.committed`: before it any failure rolls back
(the destination cleaned, the pod running again on the source, then the fallback the label
matrix gave); after it the migration only moves forward. It is the network commit, the
destination's resume in post-copy, and for a StatefulSet pod moving to a node whose kubelet
restores clones the deletion of the source object (its namesake must exist before its restore).

The parts: `resolve` fixes what moves, `policy.precopy.strategy_for` picks the strategy,
`StatusRecorder` writes the status and the events, `Clones` makes the clone pod.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clm.contracts import (
    CheckpointCommand,
    Fallback,
    MigrationFailed,
    MigrationFinished,
    MigrationReason,
    MigrationReconfigured,
    MigrationRef,
    MigrationStrategy,
    NetworkCommand,
    NodeCapabilities,
    PodRef,
    PreDumpFailed,
    PreDumpFinished,
    PreDumpSkipped,
    StepProgress,
    StepResult,
    protocol,
)
from clm.contracts.protocol import Phase, StepFailed, is_terminal
from clm.policy.compatibility import Profile, Requirements
from clm.policy.details import count
from clm.policy.precopy import PAGE, AutoPostCopy, ConvergenceRule, Round, next_round, strategy_for
from clm.policy.progress import ProgressView
from clm.policy.waterfall import waterfall
from services.coordinator.clones import Clones
from services.coordinator.kube import FINALIZER, KubeGateway, now_iso
from services.coordinator.lease import MigrationHandle
from services.coordinator.recorder import Publish, StatusRecorder, in_thread
from services.coordinator.resolve import resolve

log = logging.getLogger(__name__)

# status.failedStage of a Migration deleted before its commit point.
CANCEL_STAGE = "cancel"
# Steps a cancel does not wait for: every one is undone by the rollback's steps.
CANCELLABLE = frozenset(
    {
        protocol.PREPARE_NETWORK,
        protocol.CHECK_CPU,
        protocol.AWAIT_CLONE,
        protocol.PRE_DUMP,
        protocol.DUMP,
        protocol.RESTORE,
    }
)
# status.commitPoint when the source pod object's deletion was the commit point.
SOURCE_DELETED = "source-deleted"

Send = Callable[[CheckpointCommand | NetworkCommand, float], Awaitable[StepResult]]
Capabilities = Callable[[str], Awaitable[NodeCapabilities | None]]
StepHandler = Callable[[protocol.Step, str], Awaitable[str]]


@dataclass
class RunnerConfig:
    step_timeout: float = 300.0
    # Node compatibility rules for choosing a destination when the Migration names none.
    requirements: Requirements = field(default_factory=lambda: Requirements(profile=Profile.GENERIC))
    # Extra wait for an agent's answer beyond the step's own timeout (NATS, queueing).
    answer_grace: float = 30.0
    # The replica driving (recorded in status.driver; the lease names it).
    replica: str = "coordinator"
    # `auto` picks post-copy for pods of at least this many bytes (None: never).
    post_copy_auto_min_bytes: int | None = None
    # When pre-copy rounds stop.
    convergence: ConvergenceRule = field(default_factory=ConvergenceRule)
    # status.progress is written at most this often while a transfer runs.
    progress_every_seconds: float = 2.0


class MigrationRunner:
    def __init__(
        self,
        migration: dict[str, Any],
        *,
        kube: KubeGateway,
        send: Send,
        capabilities: Capabilities,
        publish: Publish,
        config: RunnerConfig | None = None,
        handle: MigrationHandle | None = None,
    ) -> None:
        self.config = config or RunnerConfig()
        handle = handle or MigrationHandle(migration, kube=kube, replica=self.config.replica)
        self.record = StatusRecorder(handle, publish=publish)
        self.clones = Clones(self.record)
        self.kube, self.send_command, self.capabilities = kube, send, capabilities
        self.namespace, self.name, self.uid = self.record.namespace, self.record.name, self.record.uid
        self.ref = MigrationRef(namespace=self.namespace, name=self.name, uid=self.uid)
        self.progress = ProgressView(every_seconds=self.config.progress_every_seconds)
        # Set when the coordinator saw the Migration being deleted (its watch).
        self._cancelled = asyncio.Event()
        self._clock = time.monotonic
        self._handlers: dict[protocol.Step, StepHandler] = {
            protocol.PRE_DUMP: self._pre_dump,
            protocol.DUMP: self._dump,
            protocol.RESTORE: self._restore,
        }

    @property
    def spec(self) -> dict[str, Any]:
        return self.record.spec

    @property
    def status(self) -> dict[str, Any]:
        return self.record.status

    # ----- agent steps -----

    def _move(self) -> protocol.Move:
        status = self.status
        return protocol.Move(
            migration=self.ref,
            pod=PodRef(namespace=self.namespace, name=self.spec["podName"], uid=status["sourcePodUID"]),
            pod_ip=status["podIP"],
            source=status["sourceNode"],
            destination=status["destinationNode"],
            attempt=int(status.get("attempt", 1)),
        )

    async def _step(self, step: protocol.Step, strategy: str, *, round_: int | None = None) -> StepResult:
        command = self._move().command(
            step, strategy=strategy, timeout_seconds=self.config.step_timeout, round_=round_
        )
        # The next status write carries it (a step change is not worth a write of its own).
        self.progress.begin(
            step.stage, self._clock(), round_=round_, post_copy=strategy == MigrationStrategy.POST_COPY
        )
        self.status["progress"] = self.progress.status(self._clock())
        timeout = self.config.step_timeout + self.config.answer_grace
        try:
            if step in CANCELLABLE and not self.status.get("committed"):
                result = await self._unless_cancelled_meanwhile(self.send_command(command, timeout))
            else:
                result = await self.send_command(command, timeout)
        except TimeoutError as exc:
            raise StepFailed(str(exc), stage=step.stage) from None
        if not result.ok:
            raise StepFailed(
                f"{result.agent} agent on {result.node}: {result.error}", stage=step.stage, result=result
            )
        moved = count(result.details, "bytes") or count(result.details, "pages_bytes")
        self.progress.ended(step.stage, self._clock(), moved=moved)
        self.status["progress"] = self.progress.status(self._clock())
        return result

    async def _unless_cancelled_meanwhile(self, answer: Awaitable[StepResult]) -> StepResult:
        """The step's answer, unless the Migration is deleted first: then the rollback starts
        at once. The agent may still finish the step; the rollback's steps reach it after
        (an agent runs one migration's steps in order) and undo it."""
        answering = asyncio.ensure_future(answer)
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        try:
            await asyncio.wait({answering, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if answering.done():
            return answering.result()
        answering.cancel()
        self._unless_cancelled()
        raise AssertionError("unreachable: the cancel is set")  # pragma: no cover

    async def on_progress(self, heard: StepProgress) -> None:
        """An agent's progress on a step of this migration: into the status, at a bounded rate."""
        if heard.migration_uid != self.uid:
            return
        due = self.progress.heard(
            step=heard.step,
            round_=heard.round,
            done=heard.bytes_done,
            total=heard.bytes_total,
            elapsed=heard.elapsed_seconds,
            now=self._clock(),
        )
        if due:
            self.progress.written(self._clock())
            await self.record.patch(progress=self.progress.status(self._clock()))

    async def _step_forward(self, step: protocol.Step, strategy: str) -> StepResult:
        """After the commit point a step is retried until it is done: never undone."""
        delay = 1.0
        while True:
            try:
                return await self._step(step, strategy)
            except StepFailed as failure:
                log.warning(
                    "post-commit step failed; retrying", extra={"stage": step.stage, "error": failure.reason}
                )
                # Never a silent wait: the reason is on the Migration while it retries.
                await self.record.patch(
                    message=f"{step.stage} failed, retrying in {delay:g}s: {failure.reason}"[:1000]
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    # ----- the run -----

    async def run(self) -> str:
        phase = self.status.get("phase") or Phase.PENDING
        if is_terminal(phase):
            return str(phase)
        if phase == Phase.ROLLING_BACK:
            await self._rollback(
                self.status.get("failureReason") or "rolled back", self.status.get("failedStage") or ""
            )
            return Phase.FAILED
        if not self.status.get("committed"):
            try:
                await self._before_commit()
            except StepFailed as failure:
                await self._rollback(failure.reason, failure.stage)
                return Phase.FAILED
        return await self._finalize()

    async def _before_commit(self) -> None:
        await self.record.phase(Phase.PREPARING, "resolving the pod and preparing the destination")
        await resolve(self.record, self.config.requirements)
        strategy = await self._strategy()
        for step in protocol.before_commit(strategy):
            self._unless_cancelled()
            if step is protocol.RESTORE and await self._namesake_before_restore():
                # Recorded before the deletion: a coordinator restarted after it goes on forward.
                await self.record.patch(
                    committed=True,
                    commitPoint=SOURCE_DELETED,
                    message="the StatefulSet pod's object is deleted for its namesake, which kubelet "
                    f"restores on {self.status['destinationNode']}: committed, only forward from here",
                )
                return
            handler = self._handlers.get(step)
            if handler is not None:
                strategy = await handler(step, strategy)
            else:
                await self._step(step, strategy)
        if protocol.committed_at_resume(strategy):
            # Post-copy: the pod resumed on the destination, its memory still on the source,
            # which cannot take it back now; the network commit follows, only forward.
            await self.record.patch(committed=True, message="resumed on the destination: committed")
            return
        self._unless_cancelled()
        commit = [await self._step(step, strategy) for step in protocol.COMMIT]
        await self._record_freeze(commit, committed=True)

    def cancel(self) -> None:
        """The Migration is being deleted: before the commit point the move stops now (a
        step in flight is not waited for) and rolls back; after it, the move finishes."""
        self._cancelled.set()

    def _deleting(self) -> bool:
        return self._cancelled.is_set() or bool(self.record.m["metadata"].get("deletionTimestamp"))

    def _unless_cancelled(self) -> None:
        """Before the commit point a deleted Migration is a cancel: the move stops at the next
        step and rolls back (the pod keeps running on its source), then lets the deletion go."""
        if self._deleting():
            raise StepFailed("the Migration was deleted before the commit point", stage=CANCEL_STAGE)

    async def _kubelet_restores_clones(self) -> bool:
        capabilities = await self.capabilities(self.status["destinationNode"])
        return capabilities is not None and capabilities.clones_restored_by_kubelet

    async def _namesake_before_restore(self) -> bool:
        """A StatefulSet pod moving to a node whose kubelet restores clones: its namesake can
        only exist once the source object is gone, and must exist before the restore (kubelet
        creates its containers, the node's handler restores them). The source object's
        deletion is then the commit point: kubelet ends the frozen source with it."""
        return self.status.get("ownerKind") == "StatefulSet" and await self._kubelet_restores_clones()

    async def _record_freeze(self, commit: list[StepResult], **also: Any) -> None:
        """The freeze: dump, restore and the network commit (withdraw then announce)."""
        commit_seconds = sum(result.duration_seconds for result in commit)
        freeze = (
            float(self.status.get("dumpSeconds", 0))
            + float(self.status.get("restoreSeconds", 0))
            + commit_seconds
        )
        # From the dump command to the end of the network commit, phase by phase.
        frozen = max(freeze, time.time() - float(self.status.get("dumpStartedAt", time.time())))
        phases = waterfall(
            self.status.get("dumpDetails") or {},
            self.status.get("restoreDetails") or {},
            commit_seconds=commit_seconds,
            frozen_seconds=frozen,
        )
        await self.record.patch(
            freezeSeconds=round(freeze, 3), freezeDuration=f"{freeze * 1000:.0f}ms", waterfall=phases, **also
        )

    async def _strategy(self) -> str:
        if self.status.get("strategy"):
            return str(self.status["strategy"])
        src, dst = self.status["sourceNode"], self.status["destinationNode"]
        requested = MigrationStrategy(self.spec.get("strategy") or "auto")
        capabilities = {src: await self.capabilities(src), dst: await self.capabilities(dst)}
        auto = AutoPostCopy(self.config.post_copy_auto_min_bytes, int(self.status.get("podMemoryBytes", 0)))
        choice = strategy_for(requested, capabilities, source=src, destination=dst, auto_post_copy=auto)
        if choice.problem is not None:
            raise StepFailed(choice.problem, stage=protocol.CHECK_CPU.stage)
        for reason, why in choice.events:
            if reason is MigrationReason.PRE_DUMP_SKIPPED:
                await self.record.emit("pre-dump-skipped", PreDumpSkipped, why, why=why)
            elif reason is MigrationReason.MIGRATION_RECONFIGURED:
                await self._reconfigured(requested, choice.strategy, why)
        await self.record.patch(strategy=str(choice.strategy))
        return str(choice.strategy)

    async def _reconfigured(self, previous: MigrationStrategy, strategy: MigrationStrategy, why: str) -> None:
        await self.record.emit(
            "reconfigured", MigrationReconfigured, why, previous_strategy=previous, strategy=strategy, why=why
        )

    async def _pre_dump(self, step: protocol.Step, strategy: str) -> str:
        """Pre-copy rounds while the pod runs, each reported (PreDumpFinished), until the
        convergence rule stops them. A failed round reconfigures the move to stop-and-copy;
        one that shows the pod cannot converge goes post-copy where the cluster allows it."""
        # A coordinator that restarted mid-rounds goes on from the rounds recorded.
        rounds = [
            Round(
                int(r["round"]),
                int(r["pages"]),
                int(r["bytes"]),
                float(r["durationSeconds"]),
                float(r.get("transferSeconds", 0.0)),
                None if r.get("pagesDirtiedSince") is None else int(r["pagesDirtiedSince"]),
                float(r.get("dirtiedSeconds", 0.0)),
            )
            for r in self.status.get("preDumpRounds") or []
        ]
        post_copy_allowed = await self._post_copy_allowed()
        while (
            verdict := next_round(rounds, self.config.convergence, post_copy_allowed=post_copy_allowed)
        ).another_round:
            number = len(rounds) + 1
            self._unless_cancelled()
            await self.record.phase(step.phase, f"pre-copy round {number} while the pod runs")
            try:
                result = await self._step(step, strategy, round_=number)
            except StepFailed as failure:
                await self.record.emit(
                    f"pre-dump-failed-{number}",
                    PreDumpFailed,
                    failure.reason,
                    round=number,
                    error=failure.reason,
                )
                stop_and_copy = MigrationStrategy.STOP_AND_COPY
                await self._reconfigured(
                    MigrationStrategy.PRE_COPY,
                    stop_and_copy,
                    f"pre-dump round {number} failed: continuing as stop-and-copy",
                )
                await self.record.patch(strategy=str(stop_and_copy))
                return str(stop_and_copy)
            done = Round.from_details(number, result.details, result.duration_seconds)
            if done.dirtied is not None and done.dirtied_seconds > 0:
                self.progress.dirty_rate = done.dirtied * PAGE / done.dirtied_seconds
            rounds.append(done)
            await self.record.emit(
                f"pre-dump-finished-{number}",
                PreDumpFinished,
                f"round {number}: {done.pages} pages"
                + ("" if done.dirtied is None else f", {done.dirtied} written by the pod meanwhile"),
                round=number,
                pages=done.pages,
                bytes=done.bytes,
                duration_seconds=done.seconds,
            )
            await self.record.patch(
                preDumpRounds=[
                    {
                        "round": r.number,
                        "pages": r.pages,
                        "bytes": r.bytes,
                        "durationSeconds": r.seconds,
                        "transferSeconds": r.transfer_seconds,
                        **(
                            {"pagesDirtiedSince": r.dirtied, "dirtiedSeconds": r.dirtied_seconds}
                            if r.dirtied is not None
                            else {}
                        ),
                    }
                    for r in rounds
                ]
            )
        await self.record.patch(preCopyVerdict=verdict.why)
        if verdict.post_copy:
            post_copy = MigrationStrategy.POST_COPY
            await self._reconfigured(MigrationStrategy.PRE_COPY, post_copy, verdict.why)
            await self.record.patch(strategy=str(post_copy))
            return str(post_copy)
        if verdict.stop_and_copy:
            stop_and_copy = MigrationStrategy.STOP_AND_COPY
            await self._reconfigured(MigrationStrategy.PRE_COPY, stop_and_copy, verdict.why)
            await self.record.patch(strategy=str(stop_and_copy))
            return str(stop_and_copy)
        return strategy

    async def _post_copy_allowed(self) -> bool:
        """A pod whose rounds do not converge may go post-copy: where the cluster opted in
        to post-copy (CLM_POST_COPY_AUTO) and both nodes can."""
        if self.config.post_copy_auto_min_bytes is None:
            return False
        nodes = (self.status["sourceNode"], self.status["destinationNode"])
        found = [await self.capabilities(node) for node in nodes]
        return all(caps is not None and caps.post_copy for caps in found)

    async def _dump(self, step: protocol.Step, strategy: str) -> str:
        if protocol.clone_before_dump(self.status.get("ownerKind", "")):
            await self.clones.create_before_dump()
            if await self._kubelet_restores_clones():
                # Not frozen yet: kubelet's pod start-up stays out of the freeze.
                await self._step(protocol.AWAIT_CLONE, strategy)
        await self.record.phase(step.phase, f"freezing and dumping the pod on {self.status['sourceNode']}")
        self.record.note(dumpStartedAt=round(time.time(), 3))
        dump = await self._step(step, strategy)
        self.record.note(
            bytesTransferred=int(dump.details.get("bytes", 0)),
            dumpSeconds=dump.duration_seconds,
            dumpDetails=_timings(dump.details),
        )
        self.progress.on_demand = int(dump.details.get("bytes_on_demand", 0))
        return strategy

    async def _restore(self, step: protocol.Step, strategy: str) -> str:
        # The pod is frozen: the status write goes beside the restore, not before it.
        restore, _ = await asyncio.gather(
            self._step(step, strategy),
            self.record.phase(step.phase, f"restoring on {self.status['destinationNode']}"),
        )
        self.record.note(restoreSeconds=restore.duration_seconds, restoreDetails=_timings(restore.details))
        return strategy

    async def _finalize(self) -> str:
        src, dst = self.status["sourceNode"], self.status["destinationNode"]
        strategy = self.status.get("strategy") or str(MigrationStrategy.STOP_AND_COPY)
        deleted_first = self.status.get("commitPoint") == SOURCE_DELETED
        if deleted_first and "restoreSeconds" not in self.status:
            await self.clones.replace_after_commit()
            try:
                await self._restore(protocol.RESTORE, strategy)
            except StepFailed as failure:
                await self._namesake_not_restored(failure, strategy)
                return Phase.FAILED
        if (protocol.committed_at_resume(strategy) or deleted_first) and "freezeSeconds" not in self.status:
            commit = [await self._step_forward(step, strategy) for step in protocol.COMMIT]
            await self._record_freeze(commit)
        waiting = (
            f" (the Migration was deleted past the commit point: the deletion waits for the move to "
            f"finish, finalizer {FINALIZER})"
            if self._deleting()
            else ""
        )
        await self.record.phase(Phase.FINALIZING, f"the pod runs on {dst}: cleaning up {src}{waiting}")
        fill_failure: StepFailed | None = None
        for step in protocol.after_commit(strategy):
            if step is protocol.FILL:
                where = f"arrives from {src}" if protocol.committed_at_resume(strategy) else "is put in place"
                await self.record.patch(message=f"the pod runs on {dst}: its memory {where}")
                try:
                    fill = await self._step(step, strategy)
                    self.record.note(riskWindowSeconds=fill.details.get("risk_window_seconds", 0))
                except StepFailed as failure:
                    fill_failure = failure
                continue
            await self._step_forward(step, strategy)
        if fill_failure is not None:
            await self._failed_after_commit(fill_failure)
            return Phase.FAILED
        if not protocol.clone_before_dump(self.status.get("ownerKind", "")):
            await self.clones.replace_after_commit()
        clone = await self.clones.hand_over(kubelet_reports=await self._kubelet_restores_clones())
        started = self.status.get("startTime")
        total = _seconds_since(started) if started else 0.0
        freeze = float(self.status.get("freezeSeconds", 0))
        await self.record.emit(
            "finished",
            MigrationFinished,
            f"moved to {dst} as {clone}; frozen {freeze * 1000:.0f} ms",
            clone_pod=clone,
            strategy=MigrationStrategy(strategy),
            freeze_seconds=freeze,
            total_seconds=total,
            bytes_transferred=int(self.status.get("bytesTransferred", 0)),
            phases={
                "dump": float(self.status.get("dumpSeconds", 0)),
                "restore": float(self.status.get("restoreSeconds", 0)),
                **{f"freeze_{p['phase']}": float(p["seconds"]) for p in self.status.get("waterfall") or []},
            },
        )
        self.progress.finished()
        self.status["progress"] = self.progress.status(self._clock())
        await self.record.phase(Phase.FINISHED, f"running on {dst} as {clone}", completionTime=now_iso())
        return Phase.FINISHED

    async def _namesake_not_restored(self, failure: StepFailed, strategy: str) -> None:
        """The source object is gone (the commit point) and its namesake's restore failed:
        the destination and the source's leftovers are cleaned, the namesake that never ran is
        deleted so that its StatefulSet makes the pod afresh (the state is lost: said so)."""
        for step in (protocol.ABORT_DESTINATION, protocol.ABORT_NETWORK):
            try:
                await self._step(step, strategy)
            except StepFailed as problem:
                log.warning("cleaning the destination failed", extra={"error": problem.reason})
        for step in protocol.after_commit(strategy):
            if step is not protocol.FILL:
                await self._step_forward(step, strategy)
        await self.clones.remove_namesake()
        await self._failed_after_commit(
            failure,
            outcome="the source pod was deleted at the commit point and its namesake could not be "
            "restored: the namesake is deleted, and its StatefulSet creates the pod afresh",
        )

    async def _failed_after_commit(self, failure: StepFailed, *, outcome: str | None = None) -> None:
        """The fill broke after the commit (post-copy's page stream, or a local fill): the
        destination stopped the pod (it never runs with missing memory), and the source cannot
        take it back. Whatever the fallback, the pod's objects go and its controller starts it
        afresh: an eviction could be refused by a disruption budget, and a restore on the
        source would run a state older than what its clients saw."""
        await self.clones.end_every_copy()
        fallback = Fallback(self.spec.get("fallback") or self.status.get("fallback") or "none")
        if outcome is None:
            moot = "" if fallback is Fallback.NONE else f"; {fallback} does not apply"
            outcome = (
                "the pod could run nowhere past the commit point: deleted, its controller starts it "
                f"afresh (its memory state is lost){moot}"
            )
        message = (
            f"{failure.stage} failed after the commit point: {failure.reason}; fallback {fallback}: {outcome}"
        )
        await self.record.emit(
            "failed",
            MigrationFailed,
            message,
            error=failure.reason[:2000],
            stage=failure.stage or "fill",
            fallback=fallback,
        )
        await self.record.phase(
            Phase.FAILED,
            message,
            completionTime=now_iso(),
            failureReason=failure.reason,
            failedStage=failure.stage,
        )

    async def _rollback(self, reason: str, stage: str) -> None:
        why = f"cancelling: {reason}" if stage == CANCEL_STAGE else f"{stage} failed: {reason}"
        await self.record.phase(Phase.ROLLING_BACK, why, failureReason=reason, failedStage=stage)
        problems = []
        if self.status.get("sourcePodUID") and self.status.get("destinationNode"):
            strategy = self.status.get("strategy") or str(MigrationStrategy.STOP_AND_COPY)
            for step in protocol.ROLLBACK:
                try:
                    await self._step(step, strategy)
                except StepFailed as failure:
                    problems.append(failure.reason)
        await self.clones.remove()
        if stage == CANCEL_STAGE:
            # The user's cancel: the pod stays where it runs, no fallback.
            fallback = Fallback.NONE
            message = f"cancelled: {reason}; the pod runs on {self.status.get('sourceNode')} as before"
        else:
            fallback = Fallback(self.spec.get("fallback") or self.status.get("fallback") or "none")
            outcome = await self._fallback(fallback)
            message = f"{stage} failed: {reason}; fallback {fallback}: {outcome}"
        if problems:
            message += "; rollback problems: " + "; ".join(problems)
        await self.record.emit(
            "failed",
            MigrationFailed,
            message,
            error=reason[:2000],
            stage=stage or "unknown",
            fallback=fallback,
        )
        await self.record.phase(Phase.FAILED, message, completionTime=now_iso())

    async def _fallback(self, fallback: Fallback) -> str:
        if fallback is Fallback.EVICT:
            try:
                return str(await in_thread(self.kube.evict_pod, self.namespace, self.spec["podName"]))
            except Exception as exc:  # - reported in the status and the event
                return f"eviction failed: {exc}"
        if fallback is Fallback.RESTORE_ON_SOURCE:
            return "the pod runs on its source node again"
        return "nothing more done"


def _timings(details: dict[str, Any]) -> dict[str, float]:
    """The step's measured seconds (for the waterfall), not its other details."""
    return {k: float(v) for k, v in details.items() if k.endswith("_seconds") and isinstance(v, int | float)}


def _seconds_since(iso: str) -> float:
    started = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())
