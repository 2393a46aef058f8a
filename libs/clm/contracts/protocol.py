"""The migration protocol, stated once.

Every side reads it from here: the coordinator's runner, the test driver, both node agents,
the `clm` command and the sandbox. It names the Migration resource, its phases, the two node
roles, every agent step with the role that runs it, and the order of the steps.

    before the commit point (any failure rolls back)
      network prepare   destination   the pod's namespace with its IP, unreachable
      check-cpu         destination   `criu cpuinfo check` against the source's CPU
      pre-dump  (pre-copy only)  source   one round, streamed while the pod runs
      dump              source        network lock, freeze, dump, stream the images
      restore           destination   into the prepared namespace
    the commit point
      network commit    source        stop answering for the IP (withdraw)
      network commit    destination   route and announce the IP (announce)
    after it (only ever completed, never undone)
      finalize          source        remove the frozen copy
      network release   source        clean up the source's network side

    post-copy: the commit point is the destination's resume (the memory is still on the
    source, served on demand: after the resume the source cannot take the pod back), so
      prepare, check-cpu, dump (all but the memory), restore (resumes at once)
    the commit point
      network commit (withdraw, announce), then
      fill              destination   wait for every page; a broken page stream stops the
                                      pod there (never running with missing memory)
      finalize, network release
    rollback (before the commit point, in this order: never two copies)
      abort             destination   remove whatever was restored
      abort             source        the pod runs again from its local images
      network abort     destination   undo prepare

The clone pod of a Deployment (or any owner but a StatefulSet) is created before the dump; a
StatefulSet pod's namesake only after the commit point, once the source object is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from clm.contracts.commands import (
    CheckpointCommand,
    CheckpointStep,
    MigrationRef,
    NetworkCommand,
    NetworkStep,
    PodRef,
)
from clm.contracts.events import AgentKind, StepResult
from clm.contracts.fields import MigrationStrategy

# The Migration custom resource (deploy/kustomize/base/crds).
GROUP = "live.cast.ai"
VERSION = "v1"
PLURAL = "migrations"
KIND = "Migration"
API_VERSION = f"{GROUP}/{VERSION}"
# The arguments CustomObjectsApi takes before a namespace (cluster-wide calls: all three).
CRD = (GROUP, VERSION, PLURAL)


class Phase(StrEnum):
    """`status.phase` of a Migration (the CRD's enum lists the same values)."""

    PENDING = "Pending"
    PREPARING = "Preparing"
    PRE_DUMPING = "PreDumping"
    DUMPING = "Dumping"
    RESTORING = "Restoring"
    FINALIZING = "Finalizing"
    ROLLING_BACK = "RollingBack"
    FINISHED = "Finished"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.FINISHED, Phase.FAILED})


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL_PHASES


class Role(StrEnum):
    SOURCE = "source"
    DESTINATION = "destination"


class StepFailed(Exception):
    """A step of a migration could not be done. `reason` says why (and in what state it left
    the pod); `stage` names the step for status.failedStage; `result` is the agent's answer
    when there was one."""

    def __init__(self, reason: str, *, stage: str = "", result: StepResult | None = None) -> None:
        super().__init__(f"{stage}: {reason}" if stage else reason)
        self.reason, self.stage, self.result = reason, stage, result


@dataclass(frozen=True)
class Step:
    agent: AgentKind
    name: CheckpointStep | NetworkStep
    role: Role
    # What a failure of this step is called in status.failedStage and MigrationFailed.stage.
    stage: str
    # The phase a Migration is in while the step runs.
    phase: Phase
    # What the agent does for it on that node (network steps: the backend's operation).
    action: str

    def __str__(self) -> str:
        return f"{self.agent} {self.name} on the {self.role}"


_S, _D = Role.SOURCE, Role.DESTINATION
_CP, _NET = AgentKind.CHECKPOINT, AgentKind.NETWORK

PREPARE_NETWORK = Step(_NET, NetworkStep.PREPARE, _D, "network-prepare", Phase.PREPARING, "prepare")
CHECK_CPU = Step(_CP, CheckpointStep.CHECK_CPU, _D, "check-cpu", Phase.PREPARING, "check-cpu")
AWAIT_CLONE = Step(_CP, CheckpointStep.AWAIT_CLONE, _D, "await-clone", Phase.PREPARING, "await-clone")
PRE_DUMP = Step(_CP, CheckpointStep.PRE_DUMP, _S, "pre-dump", Phase.PRE_DUMPING, "pre-dump")
DUMP = Step(_CP, CheckpointStep.DUMP, _S, "dump", Phase.DUMPING, "dump")
RESTORE = Step(_CP, CheckpointStep.RESTORE, _D, "restore", Phase.RESTORING, "restore")
WITHDRAW = Step(_NET, NetworkStep.COMMIT, _S, "network-commit", Phase.RESTORING, "withdraw")
ANNOUNCE = Step(_NET, NetworkStep.COMMIT, _D, "network-commit", Phase.RESTORING, "announce")
FINALIZE = Step(_CP, CheckpointStep.FINALIZE, _S, "finalize", Phase.FINALIZING, "finalize")
FILL = Step(_CP, CheckpointStep.FILL, _D, "fill", Phase.FINALIZING, "wait-for-pages")
RELEASE = Step(_NET, NetworkStep.RELEASE, _S, "network-release", Phase.FINALIZING, "release")
ABORT_DESTINATION = Step(_CP, CheckpointStep.ABORT, _D, "abort", Phase.ROLLING_BACK, "remove-restored")
ABORT_SOURCE = Step(_CP, CheckpointStep.ABORT, _S, "abort", Phase.ROLLING_BACK, "roll-back")
ABORT_NETWORK = Step(_NET, NetworkStep.ABORT, _D, "abort", Phase.ROLLING_BACK, "abort")

# The source stops answering for the IP, then the destination announces it: never two owners.
COMMIT = (WITHDRAW, ANNOUNCE)
AFTER_COMMIT = (FINALIZE, RELEASE)
# The destination's copy goes first: never two copies running.
ROLLBACK = (ABORT_DESTINATION, ABORT_SOURCE, ABORT_NETWORK)


def before_commit(strategy: MigrationStrategy | str) -> tuple[Step, ...]:
    """The steps up to the commit point for a (resolved) strategy, in order."""
    rounds = (PRE_DUMP,) if MigrationStrategy(strategy) is MigrationStrategy.PRE_COPY else ()
    return (PREPARE_NETWORK, CHECK_CPU, *rounds, DUMP, RESTORE)


def committed_at_resume(strategy: MigrationStrategy | str) -> bool:
    """Post-copy: the destination's resume is the commit point (the network commit after it
    only moves forward)."""
    return MigrationStrategy(strategy) is MigrationStrategy.POST_COPY


def after_commit(strategy: MigrationStrategy | str) -> tuple[Step, ...]:
    """The steps after the commit point and the network commit, in order. Every strategy
    fills: a lazy restore resumes the pod before its memory is all in place (post-copy's
    comes from the source, the others' from the images already on the destination), and
    the source goes only once it is."""
    return (FILL, *AFTER_COMMIT)


def every_step() -> tuple[Step, ...]:
    return (
        AWAIT_CLONE,
        *before_commit(MigrationStrategy.PRE_COPY),
        *COMMIT,
        FILL,
        *AFTER_COMMIT,
        *ROLLBACK,
    )


def clone_before_dump(owner_kind: str) -> bool:
    """A StatefulSet pod keeps its name: its clone can only exist once the source is gone."""
    return owner_kind != "StatefulSet"


@dataclass(frozen=True)
class Move:
    """One migration as the agents see it: what moves, from where to where."""

    migration: MigrationRef
    pod: PodRef
    pod_ip: str
    source: str
    destination: str
    # A retried migration (a new attempt) gets new command ids.
    attempt: int = 1

    def node(self, role: Role) -> str:
        return self.source if role is Role.SOURCE else self.destination

    def command(
        self,
        step: Step,
        *,
        strategy: MigrationStrategy | str,
        timeout_seconds: float,
        round_: int | None = None,
    ) -> CheckpointCommand | NetworkCommand:
        """The command for `step`, with an id that is the same every time it is asked for
        (an agent that already answered it answers again without redoing the work)."""
        node = self.node(step.role)
        common = {
            "node": node,
            "migration": self.migration,
            "pod": self.pod,
            "source_node": self.source,
            "destination_node": self.destination,
        }
        if step.agent is AgentKind.CHECKPOINT:
            return CheckpointCommand(
                **common,
                step=CheckpointStep(step.name),
                strategy=MigrationStrategy(strategy),
                round=round_,
                timeout_seconds=timeout_seconds,
                message_id=f"{self.migration.uid}:checkpoint:{step.name}:{node}:{round_ or 0}:{self.attempt}",
            )
        return NetworkCommand(
            **common,
            step=NetworkStep(step.name),
            pod_ip=self.pod_ip,
            # Network steps are quick; a stuck one should not hold a migration for long.
            timeout_seconds=min(timeout_seconds, 120),
            message_id=f"{self.migration.uid}:network:{step.name}:{node}:{self.attempt}",
        )


def roles_of(command: CheckpointCommand | NetworkCommand) -> frozenset[Role]:
    """The roles the addressed node plays in the command's migration (none, if it is neither
    its source nor its destination)."""
    played = {Role.SOURCE: command.source_node, Role.DESTINATION: command.destination_node}
    return frozenset(role for role, node in played.items() if node == command.node)


def step_of(agent: AgentKind, command: CheckpointCommand | NetworkCommand) -> Step:
    """The protocol step a command asks of the node it is addressed to; StepFailed if that
    node does not play the role the step belongs to."""
    roles = roles_of(command)
    candidates = [s for s in every_step() if s.agent is agent and s.name == command.step]
    for step in candidates:
        if step.role in roles:
            return step
    if not candidates:
        raise StepFailed(f"{command.step} is not a {agent} step")
    wanted = candidates[0].role
    raise StepFailed(f"{command.step} is a {wanted}-node step, but {command.node} is not the {wanted}")
