"""One migration, driven from whatever its status says to Finished or Failed.

Level-based: the Migration's status is the state. Every step is an idempotent command to a
node agent, so a runner started on a half-done migration (after a coordinator crash, or by
another replica) repeats the step it was on and goes on; events are keyed, so none is
recorded twice. The commit point is `status.committed`: before it any failure rolls back
(the destination cleaned, the pod running again on the source, then the fallback the label
matrix gave); after it the migration only moves forward.

    Preparing   network prepare (destination), check-cpu, strategy events
    PreDumping  one pre-copy round when the strategy is pre-copy; then the clone pod
    Dumping     dump (source: freeze, images streamed to the destination)
    Restoring   restore (destination), network commit (source, then destination) → committed
    Finalizing  finalize and release (source), clone marked running, source pod deleted
    RollingBack abort (destination, then source), network abort, fallback
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clm.contracts import (
    EVENT_TYPE,
    CheckpointCommand,
    CheckpointStep,
    Fallback,
    MigrationFailed,
    MigrationFinished,
    MigrationReason,
    MigrationReconfigured,
    MigrationRef,
    MigrationStrategy,
    NetworkCommand,
    NetworkStep,
    NodeCapabilities,
    PodCreateFailed,
    PodCreateFinished,
    PodRef,
    PreDumpFailed,
    PreDumpFinished,
    PreDumpSkipped,
    StepResult,
)
from clm.contracts.base import Message
from clm.policy import objects as o
from clm.policy.compatibility import Profile, Requirements
from clm.policy.evictor import matrix
from clm.policy.naming import clone_name, clone_spec, runtime_pod_uid
from clm.policy.precopy import choose_strategy
from services.coordinator.destination import choose_destination
from services.coordinator.kube import KubeGateway, now_iso

log = logging.getLogger(__name__)

Send = Callable[[CheckpointCommand | NetworkCommand, float], Awaitable[StepResult]]
Capabilities = Callable[[str], Awaitable[NodeCapabilities | None]]
Publish = Callable[[Message], Awaitable[Any]]
TERMINAL = ("Finished", "Failed")


class StepFailure(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclass
class RunnerConfig:
    step_timeout: float = 300.0
    # Node compatibility rules for choosing a destination when the Migration names none.
    requirements: Requirements = field(default_factory=lambda: Requirements(profile=Profile.GENERIC))
    # Extra wait for an agent's answer beyond the step's own timeout (NATS, queueing).
    answer_grace: float = 30.0


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
    ) -> None:
        self.m = migration
        self.kube, self.send_command, self.capabilities, self.publish = kube, send, capabilities, publish
        self.config = config or RunnerConfig()
        meta = migration["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec: dict[str, Any] = migration.get("spec") or {}
        self.status: dict[str, Any] = dict(migration.get("status") or {})
        self.ref = MigrationRef(namespace=self.namespace, name=self.name, uid=self.uid)

    # ----- status and events -----

    async def _kube(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _patch(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["observedGeneration"] = self.m["metadata"].get("generation", 1)
        self.m = await self._kube(self.kube.patch_status, self.m, self.status)

    async def _phase(self, phase: str, message: str, **fields: Any) -> None:
        condition = {
            "type": "Progressing",
            "status": "True" if phase not in TERMINAL else "False",
            "reason": phase,
            "message": message,
            "lastTransitionTime": now_iso(),
            "observedGeneration": self.m["metadata"].get("generation", 1),
        }
        if phase == "Finished":
            condition = {**condition, "type": "Succeeded", "status": "True"}
        if phase == "Failed":
            condition = {**condition, "type": "Succeeded", "status": "False"}
        conditions = [c for c in self.status.get("conditions") or [] if c.get("type") != condition["type"]]
        log.info(
            "migration phase",
            extra={"migration": f"{self.namespace}/{self.name}", "phase": phase, "detail": message},
        )
        await self._patch(phase=phase, message=message, conditions=[*conditions, condition], **fields)

    async def _emit(self, key: str, model: type[Message], message: str, **fields: Any) -> None:
        """Publish the event on NATS and record it on the Migration, once per key, in order."""
        keys: list[str] = list(self.status.get("eventKeys") or [])
        if key in keys:
            return
        sequence = len(keys) + 1
        event = model(
            namespace=self.namespace,
            migration=self.name,
            migration_uid=self.uid,
            pod=self.spec["podName"],
            source_node=self.status.get("sourceNode") or self.spec.get("sourceNode") or "unknown",
            destination_node=self.status.get("destinationNode") or None,
            sequence=sequence,
            message=message,
            message_id=f"{self.uid}:{key}",
            **fields,
        )
        await self.publish(event)
        reason = MigrationReason(event.kind)
        try:
            await self._kube(
                self.kube.record_event, self.m, sequence, reason.value, EVENT_TYPE[reason], message
            )
        except Exception as exc:  # - a Kubernetes Event is best-effort
            log.warning(
                "could not record the Kubernetes Event", extra={"reason": reason.value, "error": str(exc)}
            )
        await self._patch(eventKeys=[*keys, key])

    # ----- agent steps -----

    def _pod_ref(self) -> PodRef:
        return PodRef(namespace=self.namespace, name=self.spec["podName"], uid=self.status["sourcePodUID"])

    async def _step(self, command: CheckpointCommand | NetworkCommand, stage: str) -> StepResult:
        try:
            result = await self.send_command(command, self.config.step_timeout + self.config.answer_grace)
        except TimeoutError as exc:
            raise StepFailure(stage, str(exc)) from None
        if not result.ok:
            raise StepFailure(stage, f"{result.agent} agent on {result.node}: {result.error}")
        return result

    def _checkpoint(
        self, node: str, step: CheckpointStep, strategy: str, round_: int | None = None
    ) -> CheckpointCommand:
        return CheckpointCommand(
            node=node,
            step=step,
            migration=self.ref,
            pod=self._pod_ref(),
            source_node=self.status["sourceNode"],
            destination_node=self.status["destinationNode"],
            strategy=MigrationStrategy(strategy),
            round=round_,
            timeout_seconds=self.config.step_timeout,
            message_id=f"{self.uid}:checkpoint:{step}:{node}:{round_ or 0}:{self.status.get('attempt', 1)}",
        )

    def _network(self, node: str, step: NetworkStep) -> NetworkCommand:
        return NetworkCommand(
            node=node,
            step=step,
            migration=self.ref,
            pod=self._pod_ref(),
            pod_ip=self.status["podIP"],
            source_node=self.status["sourceNode"],
            destination_node=self.status["destinationNode"],
            timeout_seconds=min(self.config.step_timeout, 120),
            message_id=f"{self.uid}:network:{step}:{node}:{self.status.get('attempt', 1)}",
        )

    # ----- the run -----

    async def run(self) -> str:
        phase = self.status.get("phase") or "Pending"
        if phase in TERMINAL:
            return phase
        if phase == "RollingBack":
            await self._rollback(
                self.status.get("failureReason") or "rolled back", self.status.get("failedStage") or ""
            )
            return "Failed"
        if not self.status.get("committed"):
            try:
                await self._before_commit()
            except StepFailure as failure:
                await self._rollback(failure.reason, failure.stage)
                return "Failed"
        await self._finalize()
        return "Finished"

    async def _resolve(self) -> None:
        """Pod, nodes and IP, fixed in the status once (a resumed run keeps them)."""
        if self.status.get("sourcePodUID"):
            return
        pod = await self._kube(self.kube.get_pod, self.namespace, self.spec["podName"])
        if pod is None:
            raise StepFailure("resolve", f"pod {self.namespace}/{self.spec['podName']} does not exist")
        source = o.spec(pod).get("nodeName")
        if not source:
            raise StepFailure("resolve", "the pod is not running on any node (spec.nodeName is empty)")
        if self.spec.get("sourceNode") and self.spec["sourceNode"] != source:
            raise StepFailure(
                "resolve", f"spec.sourceNode is {self.spec['sourceNode']} but the pod runs on {source}"
            )
        ip = o.status(pod).get("podIP")
        if not ip:
            raise StepFailure("resolve", "the pod has no IP (status.podIP) to hand over")
        destination = self.spec.get("destinationNode") or self.status.get("destinationNode")
        if not destination:
            destination = await self._choose_destination(pod, source)
        if destination == source:
            raise StepFailure("resolve", f"the pod already runs on {destination}")
        owner = o.controller_ref(pod)
        kind = (owner or {}).get("kind", "")
        # A StatefulSet pod's object is deleted before its namesake is created: keep it.
        kept = {"sourcePodSpec": pod} if kind == "StatefulSet" else {}
        # Unset in the spec: the label matrix decides what a failure leads to.
        fallback = self.spec.get("fallback") or str(matrix(o.labels(pod)).fallback)
        await self._patch(
            # For a clone this is its first ancestor's UID: what the agents find it by.
            sourcePodUID=runtime_pod_uid(pod),
            sourceNode=source,
            destinationNode=destination,
            podIP=ip,
            ownerKind=kind,
            startTime=now_iso(),
            fallback=fallback,
            **kept,
        )

    async def _choose_destination(self, pod: dict[str, Any], source: str) -> str:
        nodes = await self._kube(self.kube.list_nodes)
        source_node = next((n for n in nodes if o.name(n) == source), None)
        if source_node is None:
            raise StepFailure("resolve", f"the source node {source} does not exist")
        pods = await self._kube(self.kube.list_pods)
        chosen, why = choose_destination(pod, source_node, nodes, pods, self.config.requirements)
        if chosen is None:
            raise StepFailure("resolve", "no node can take the pod: " + ("; ".join(why) or "no other nodes"))
        return chosen

    async def _before_commit(self) -> None:
        await self._phase("Preparing", "resolving the pod and preparing the destination")
        await self._resolve()
        src, dst = self.status["sourceNode"], self.status["destinationNode"]
        strategy = await self._strategy(src, dst)
        await self._step(self._network(dst, NetworkStep.PREPARE), "network-prepare")
        await self._step(self._checkpoint(dst, CheckpointStep.CHECK_CPU, strategy), "check-cpu")
        if strategy == MigrationStrategy.PRE_COPY:
            strategy = await self._pre_dump(src, strategy)
        if self.status.get("ownerKind") != "StatefulSet":
            await self._create_clone()
        await self._phase("Dumping", f"freezing and dumping the pod on {src}")
        dump = await self._step(self._checkpoint(src, CheckpointStep.DUMP, strategy), "dump")
        await self._phase(
            "Restoring",
            f"restoring on {dst}",
            bytesTransferred=int(dump.details.get("bytes", 0)),
            dumpSeconds=dump.duration_seconds,
        )
        restore = await self._step(self._checkpoint(dst, CheckpointStep.RESTORE, strategy), "restore")
        await self._step(self._network(src, NetworkStep.COMMIT), "network-commit")
        commit = await self._step(self._network(dst, NetworkStep.COMMIT), "network-commit")
        freeze = float(self.status.get("dumpSeconds", 0)) + restore.duration_seconds + commit.duration_seconds
        await self._patch(
            committed=True,
            freezeSeconds=round(freeze, 3),
            freezeDuration=f"{freeze * 1000:.0f}ms",
            restoreSeconds=restore.duration_seconds,
        )

    async def _strategy(self, src: str, dst: str) -> str:
        if self.status.get("strategy"):
            return self.status["strategy"]
        requested = MigrationStrategy(self.spec.get("strategy") or "auto")
        source_caps, destination_caps = await self.capabilities(src), await self.capabilities(dst)
        for node, caps in ((src, source_caps), (dst, destination_caps)):
            if caps is None or not caps.probe_ok:
                raise StepFailure(
                    "check-cpu",
                    f"node {node} has no working checkpoint agent "
                    f"({'no capabilities published' if caps is None else caps.problems})",
                )
        assert source_caps is not None and destination_caps is not None
        choice = choose_strategy(requested, source_caps, destination_caps)
        strategy, events = choice.strategy, list(choice.events)
        if strategy == MigrationStrategy.POST_COPY:
            # The agents do not offer lazy pages yet (see the README's status).
            events = [
                (MigrationReason.PRE_DUMP_SKIPPED, "post-copy requested"),
                (
                    MigrationReason.MIGRATION_RECONFIGURED,
                    "post-copy is not offered by this version's checkpoint agents: "
                    "continuing as stop-and-copy",
                ),
            ]
            strategy = MigrationStrategy.STOP_AND_COPY
        for reason, why in events:
            if reason is MigrationReason.PRE_DUMP_SKIPPED:
                await self._emit("pre-dump-skipped", PreDumpSkipped, why, why=why)
            elif reason is MigrationReason.MIGRATION_RECONFIGURED:
                await self._emit(
                    "reconfigured",
                    MigrationReconfigured,
                    why,
                    previous_strategy=requested,
                    strategy=strategy,
                    why=why,
                )
        await self._patch(strategy=str(strategy))
        return str(strategy)

    async def _pre_dump(self, src: str, strategy: str) -> str:
        await self._phase("PreDumping", "pre-copy round 1 while the pod runs")
        try:
            result = await self._step(self._checkpoint(src, CheckpointStep.PRE_DUMP, strategy, 1), "pre-dump")
        except StepFailure as failure:
            await self._emit(
                "pre-dump-failed-1", PreDumpFailed, failure.reason, round=1, error=failure.reason
            )
            why = "pre-dump round 1 failed: continuing as stop-and-copy"
            await self._emit(
                "reconfigured",
                MigrationReconfigured,
                why,
                previous_strategy=MigrationStrategy.PRE_COPY,
                strategy=MigrationStrategy.STOP_AND_COPY,
                why=why,
            )
            await self._patch(strategy=str(MigrationStrategy.STOP_AND_COPY))
            return str(MigrationStrategy.STOP_AND_COPY)
        d = result.details
        pages, size = int(d.get("pages_written", 0)), int(d.get("bytes", 0))
        await self._emit(
            "pre-dump-finished-1",
            PreDumpFinished,
            f"round 1: {pages} pages",
            round=1,
            pages=pages,
            bytes=size,
            duration_seconds=result.duration_seconds,
        )
        await self._patch(
            preDumpRounds=[
                {"round": 1, "pages": pages, "bytes": size, "durationSeconds": result.duration_seconds}
            ]
        )
        return strategy

    async def _create_clone(self) -> None:
        """The clone pod on the destination (policy core: name, spec, cast.ai/restore)."""
        dst = self.status["destinationNode"]
        pod = await self._kube(self.kube.get_pod, self.namespace, self.spec["podName"])
        if pod is None:
            raise StepFailure("pod-create", "the source pod disappeared")
        name = self.status.get("clonePod")
        if not name:
            taken = await self._kube(self.kube.pod_names, self.namespace)
            name = clone_name(self.spec["podName"], self.status.get("ownerKind", ""), taken)
            await self._patch(clonePod=name)
        spec = clone_spec(pod, name=name, node=dst)
        try:
            if spec.problems:
                raise ValueError("; ".join(p.message for p in spec.problems))
            await self._kube(self.kube.create_pod, self.namespace, spec.pod)
        except Exception as exc:  # - any API refusal is a failed pod creation
            await self._emit(
                "pod-create-failed",
                PodCreateFailed,
                f"clone {name}: {exc}",
                clone_pod=name,
                node=dst,
                error=str(exc)[:1000],
            )
            raise StepFailure("pod-create", f"creating the clone pod {name} failed: {exc}") from None
        await self._emit(
            "pod-create-finished",
            PodCreateFinished,
            f"clone pod {name} created on {dst}",
            clone_pod=name,
            node=dst,
        )

    async def _finalize(self) -> None:
        src, dst = self.status["sourceNode"], self.status["destinationNode"]
        await self._phase("Finalizing", f"the pod runs on {dst}: cleaning up {src}")
        strategy = self.status.get("strategy") or "stop-and-copy"
        await self._step_forward(self._checkpoint(src, CheckpointStep.FINALIZE, strategy), "finalize")
        await self._step_forward(self._network(src, NetworkStep.RELEASE), "network-release")
        if self.status.get("ownerKind") == "StatefulSet":
            # Its clone takes the same name: the source object must be gone first.
            await self._kube(self.kube.delete_pod, self.namespace, self.spec["podName"])
            if not self.status.get("clonePod"):
                await self._patch(clonePod=self.spec["podName"])
            await self._create_clone_after_commit()
        clone = self.status["clonePod"]
        await self._kube(self.kube.set_pod_running, self.namespace, clone, self.status.get("podIP"))
        if clone != self.spec["podName"]:
            await self._kube(self.kube.delete_pod, self.namespace, self.spec["podName"])
        started = self.status.get("startTime")
        total = _seconds_since(started) if started else 0.0
        freeze = float(self.status.get("freezeSeconds", 0))
        await self._emit(
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
            },
        )
        await self._phase("Finished", f"running on {dst} as {clone}", completionTime=now_iso())

    async def _create_clone_after_commit(self) -> None:
        pod_name, dst = self.status["clonePod"], self.status["destinationNode"]
        if "pod-create-finished" in (self.status.get("eventKeys") or []):
            return
        source = self.status.get("sourcePodSpec")
        if source is None:
            raise StepFailure("pod-create", "the StatefulSet pod's spec was not kept")
        spec = clone_spec(source, name=pod_name, node=dst)
        await self._kube(self.kube.create_pod, self.namespace, spec.pod)
        await self._emit(
            "pod-create-finished",
            PodCreateFinished,
            f"pod {pod_name} recreated on {dst}",
            clone_pod=pod_name,
            node=dst,
        )

    async def _step_forward(self, command: CheckpointCommand | NetworkCommand, stage: str) -> None:
        """After the commit point a step is retried until it is done: never undone."""
        delay = 1.0
        while True:
            try:
                await self._step(command, stage)
                return
            except StepFailure as failure:
                log.warning(
                    "post-commit step failed; retrying", extra={"stage": stage, "error": failure.reason}
                )
                # Never a silent wait: the reason is on the Migration while it retries.
                await self._patch(message=f"{stage} failed, retrying in {delay:g}s: {failure.reason}"[:1000])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _rollback(self, reason: str, stage: str) -> None:
        await self._phase("RollingBack", f"{stage} failed: {reason}", failureReason=reason, failedStage=stage)
        problems = []
        if self.status.get("sourcePodUID") and self.status.get("destinationNode"):
            src, dst = self.status["sourceNode"], self.status["destinationNode"]
            strategy = self.status.get("strategy") or "stop-and-copy"
            for command in (
                self._checkpoint(dst, CheckpointStep.ABORT, strategy),
                self._checkpoint(src, CheckpointStep.ABORT, strategy),
                self._network(dst, NetworkStep.ABORT),
            ):
                try:
                    await self._step(command, "abort")
                except StepFailure as failure:
                    problems.append(failure.reason)
        clone = self.status.get("clonePod")
        if clone and clone != self.spec["podName"]:
            await self._kube(self.kube.delete_pod, self.namespace, clone)
        fallback = Fallback(self.spec.get("fallback") or self.status.get("fallback") or "none")
        outcome = await self._fallback(fallback)
        message = f"{stage} failed: {reason}; fallback {fallback}: {outcome}"
        if problems:
            message += "; rollback problems: " + "; ".join(problems)
        await self._emit(
            "failed",
            MigrationFailed,
            message,
            error=reason[:2000],
            stage=stage or "unknown",
            fallback=fallback,
        )
        await self._phase("Failed", message, completionTime=now_iso())

    async def _fallback(self, fallback: Fallback) -> str:
        if fallback is Fallback.EVICT:
            try:
                return await self._kube(self.kube.evict_pod, self.namespace, self.spec["podName"])
            except Exception as exc:  # - reported in the status and the event
                return f"eviction failed: {exc}"
        if fallback is Fallback.RESTORE_ON_SOURCE:
            return "the pod runs on its source node again"
        return "nothing more done"


def _seconds_since(iso: str) -> float:
    from datetime import UTC, datetime

    started = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())
