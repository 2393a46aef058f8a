"""Events: facts that happened, published to the CLM_EVENTS stream.

The eight migration event reasons are the ones the seed documents define; each is used as
the last token of its NATS subject and, by the coordinator, as the Kubernetes Event reason
on the Migration object.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from clm.contracts import subjects
from clm.contracts.base import Message
from clm.contracts.commands import CheckpointCommand, NetworkCommand
from clm.contracts.fields import (
    Fallback,
    K8sName,
    MigrationStrategy,
    NodeName,
    PhaseTimings,
)


class MigrationReason(StrEnum):
    """The documented migration event reasons, in the order a migration can emit them."""

    PRE_DUMP_SKIPPED = "PreDumpSkipped"
    PRE_DUMP_FINISHED = "PreDumpFinished"
    PRE_DUMP_FAILED = "PreDumpFailed"
    MIGRATION_RECONFIGURED = "MigrationReconfigured"
    POD_CREATE_FINISHED = "PodCreateFinished"
    POD_CREATE_FAILED = "PodCreateFailed"
    MIGRATION_FINISHED = "MigrationFinished"
    MIGRATION_FAILED = "MigrationFailed"


# Kubernetes Event type per reason: failures are Warnings, the rest Normal.
EVENT_TYPE: dict[MigrationReason, str] = {
    reason: ("Warning" if reason.endswith("Failed") else "Normal") for reason in MigrationReason
}


class _MigrationEvent(Message):
    """Fields every migration event carries, whatever its reason."""

    namespace: K8sName
    migration: K8sName
    migration_uid: str = Field(min_length=1)
    pod: K8sName
    source_node: NodeName
    destination_node: NodeName | None = None
    # Position of this event in its migration's history (1, 2, ...): events are recorded
    # one to one and in order on NATS and on the Migration object.
    sequence: int = Field(ge=1)
    # Human-readable text, also the Kubernetes Event message.
    message: str = ""

    def subject(self) -> str:
        return subjects.migration_event(self.namespace, self.migration, self.kind)

    @property
    def reason(self) -> MigrationReason:
        return MigrationReason(self.kind)


class PreDumpSkipped(_MigrationEvent):
    kind: Literal["PreDumpSkipped"] = "PreDumpSkipped"
    why: str = Field(min_length=1)


class PreDumpFinished(_MigrationEvent):
    kind: Literal["PreDumpFinished"] = "PreDumpFinished"
    round: int = Field(ge=1)
    pages: int = Field(ge=0)
    bytes: int = Field(ge=0)
    duration_seconds: float = Field(ge=0)


class PreDumpFailed(_MigrationEvent):
    kind: Literal["PreDumpFailed"] = "PreDumpFailed"
    round: int = Field(ge=1)
    error: str = Field(min_length=1)


class MigrationReconfigured(_MigrationEvent):
    kind: Literal["MigrationReconfigured"] = "MigrationReconfigured"
    previous_strategy: MigrationStrategy
    strategy: MigrationStrategy
    why: str = Field(min_length=1)


class PodCreateFinished(_MigrationEvent):
    kind: Literal["PodCreateFinished"] = "PodCreateFinished"
    clone_pod: K8sName
    node: NodeName


class PodCreateFailed(_MigrationEvent):
    kind: Literal["PodCreateFailed"] = "PodCreateFailed"
    clone_pod: K8sName
    node: NodeName
    error: str = Field(min_length=1)


class MigrationFinished(_MigrationEvent):
    kind: Literal["MigrationFinished"] = "MigrationFinished"
    clone_pod: K8sName
    strategy: MigrationStrategy
    freeze_seconds: float = Field(ge=0)
    total_seconds: float = Field(ge=0)
    bytes_transferred: int = Field(ge=0)
    phases: PhaseTimings = Field(default_factory=dict)


class MigrationFailed(_MigrationEvent):
    kind: Literal["MigrationFailed"] = "MigrationFailed"
    error: str = Field(min_length=1)
    # The step that failed, e.g. "dump", "restore", "pod-create".
    stage: str = Field(min_length=1)
    fallback: Fallback


MigrationEvent = Annotated[
    PreDumpSkipped
    | PreDumpFinished
    | PreDumpFailed
    | MigrationReconfigured
    | PodCreateFinished
    | PodCreateFailed
    | MigrationFinished
    | MigrationFailed,
    Field(discriminator="kind"),
]
MIGRATION_EVENT_ADAPTER: TypeAdapter[MigrationEvent] = TypeAdapter(MigrationEvent)
MIGRATION_EVENT_MODELS: dict[MigrationReason, type[_MigrationEvent]] = {
    MigrationReason(model.model_fields["kind"].default): model
    for model in (
        PreDumpSkipped,
        PreDumpFinished,
        PreDumpFailed,
        MigrationReconfigured,
        PodCreateFinished,
        PodCreateFailed,
        MigrationFinished,
        MigrationFailed,
    )
}


class AgentKind(StrEnum):
    CHECKPOINT = "checkpoint"
    NETWORK = "network"


class AgentStep(Message):
    """What names one step of one migration on one node's agent: the fields its answer and its
    progress share."""

    namespace: K8sName
    migration: K8sName
    migration_uid: str = Field(min_length=1)
    agent: AgentKind
    node: NodeName
    step: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9-]*$")


class StepResult(AgentStep):
    """A node agent's answer to one command: done, or failed with a reason."""

    kind: Literal["StepResult"] = "StepResult"
    # The message_id of the command this answers.
    command_id: str = Field(min_length=1)
    ok: bool
    error: str | None = None
    duration_seconds: float = Field(ge=0)
    # Measurements of the step (pages, bytes, per-phase seconds...).
    details: dict[str, float | int | str | bool] = Field(default_factory=dict)

    def subject(self) -> str:
        return subjects.migration_step(self.namespace, self.migration, self.agent, self.step)


class StepProgress(AgentStep):
    """How far a running step has got: sent by an agent a few times a second at most while it
    moves a pod's memory (a pre-copy round, the dump's transfer, a post-copy fill). Plain
    NATS, not stored: it is only worth anything while the step runs."""

    STORED: ClassVar[bool] = False

    kind: Literal["StepProgress"] = "StepProgress"
    round: int | None = Field(default=None, ge=1)
    bytes_done: int = Field(ge=0)
    # 0: not known yet.
    bytes_total: int = Field(default=0, ge=0)
    # Seconds since the step began.
    elapsed_seconds: float = Field(ge=0)

    def subject(self) -> str:
        return subjects.migration_progress(self.namespace, self.migration)


class NodeCapabilities(Message):
    """What a node's checkpoint agent found it can do: published at start and repeated every
    CLM_CAPABILITIES_INTERVAL_SECONDS, so silence means the agent is gone."""

    kind: Literal["NodeCapabilities"] = "NodeCapabilities"
    node: NodeName
    agent_version: str
    arch: str = Field(min_length=1)
    criu_version: str | None = None
    # The probe as a whole worked: CRIU runs and `criu check` passed.
    probe_ok: bool
    dirty_memory_tracking: bool = False
    userfaultfd: bool = False
    tcp_established: bool = False
    # `criu cpuinfo dump` output, base64, so a destination can run `criu cpuinfo check`.
    cpuinfo_image_b64: str | None = None
    # host:port where this node's agent receives checkpoint images from other agents.
    transfer_address: str | None = Field(
        default=None, pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$"
    )
    # host:port of this node's agent's page relay (post-copy page traffic, in mutual TLS).
    pages_address: str | None = Field(default=None, pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$")
    # This node can take part in a post-copy move (either side); if not, why not.
    post_copy: bool = False
    post_copy_problem: str | None = None
    # Clones here are restored when kubelet creates their containers (the clm-restore
    # RuntimeClass handler, containerd nodes), so a clone's pod object must exist before its
    # restore: a StatefulSet pod's namesake is then created before the restore, not after.
    clones_restored_by_kubelet: bool = False
    problems: list[str] = Field(default_factory=list)

    def subject(self) -> str:
        return subjects.node_capabilities(self.node)


class NodeDrained(Message):
    kind: Literal["NodeDrained"] = "NodeDrained"
    node: NodeName
    pods_migrated: int = Field(ge=0)
    pods_evicted: int = Field(ge=0)
    # What the planner does next with the node (deleting it belongs to the autoscaler).
    action: Literal["none", "cordon-only", "delete-requested"] = "none"

    def subject(self) -> str:
        return subjects.node_drained(self.node)


class PlannedMove(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: K8sName
    pod: K8sName
    action: Literal["live-migrate", "evict"]
    # The plan's destination; None: the coordinator chooses (or the scheduler, for evictions).
    destination: str | None = None
    why: str = ""


class PlannedDrain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeName
    why: Literal["bin-packing", "spot-interruption"]
    saving_per_hour: float = 0.0
    moves: list[PlannedMove] = Field(default_factory=list)


class DrainPlanned(Message):
    """What one planner cycle decided (published every cycle, dry-run or not)."""

    kind: Literal["DrainPlanned"] = "DrainPlanned"
    mode: Literal["default", "aggressive"]
    dry_run: bool
    nodes: int = Field(ge=0)
    pods: int = Field(ge=0)
    nodes_draining: list[str] = Field(default_factory=list)
    nodes_reclaimed: list[str] = Field(default_factory=list)
    # Drains started this cycle (the first 100, each with up to 200 moves).
    new_drains: list[PlannedDrain] = Field(default_factory=list)
    # How many nodes the bin-packing plan found worth draining (beyond the limits too).
    nodes_the_plan_would_drain: int = Field(default=0, ge=0)
    migrations_in_flight: int = Field(default=0, ge=0)
    migrations_deferred: int = Field(default=0, ge=0)
    paused: bool = False
    cycle_seconds: float = Field(default=0.0, ge=0)

    def subject(self) -> str:
        return subjects.PLANNER_PLAN


class EligibilityReason(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Machine-readable, e.g. "tty", "gpu", "host-path", "owner-daemonset".
    code: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9-]*$")
    message: str = Field(min_length=1)


class PodEligibilityChanged(Message):
    kind: Literal["PodEligibilityChanged"] = "PodEligibilityChanged"
    namespace: K8sName
    pod: K8sName
    eligible: bool
    reasons: list[EligibilityReason] = Field(default_factory=list)

    def subject(self) -> str:
        return subjects.pod_eligibility(self.namespace, self.pod)


def step_result_for(
    command: CheckpointCommand | NetworkCommand,
    *,
    agent: AgentKind,
    ok: bool,
    duration_seconds: float,
    error: str | None = None,
    details: dict[str, float | int | str | bool] | None = None,
) -> StepResult:
    """The StepResult answering `command`; its message_id derives from the command's, so an
    agent that answers the same command twice publishes one result."""
    return StepResult(
        namespace=command.migration.namespace,
        migration=command.migration.name,
        migration_uid=command.migration.uid,
        agent=agent,
        node=command.node,
        step=command.step,
        command_id=command.message_id,
        ok=ok,
        error=error,
        duration_seconds=duration_seconds,
        details=details or {},
        message_id=f"{command.message_id}:result",
    )
