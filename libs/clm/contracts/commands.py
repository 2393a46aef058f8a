"""Commands: requests for work, published to the CLM_COMMANDS work-queue stream.

Every command is idempotent on its receiver: a repeated command (same migration, same
step) does not redo or break finished work. Node agents are addressed by node name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

from clm.contracts import subjects
from clm.contracts.base import Message
from clm.contracts.fields import K8sName, MigrationStrategy, NodeName


class PodRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: K8sName
    name: K8sName
    uid: str = Field(min_length=1)


class MigrationRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: K8sName
    name: K8sName
    uid: str = Field(min_length=1)


class RequestMigration(Message):
    """Ask the coordinator to live-migrate a pod (it creates the Migration object)."""

    kind: Literal["RequestMigration"] = "RequestMigration"
    namespace: K8sName
    pod: K8sName
    # None: the coordinator chooses a compatible destination.
    destination_node: NodeName | None = None
    strategy: MigrationStrategy = MigrationStrategy.AUTO
    requested_by: str = Field(default="nats", min_length=1, max_length=253)

    def subject(self) -> str:
        return subjects.migration_request(self.namespace)


class CheckpointStep(StrEnum):
    # On the destination: `criu cpuinfo check` against the source's CPU, before any freeze.
    CHECK_CPU = "check-cpu"
    # On a destination whose kubelet restores clones: wait (a while) until kubelet's creation
    # of the clone's container waits in the restore handler, so the freeze does not wait
    # for kubelet's pod start-up.
    AWAIT_CLONE = "await-clone"
    # On the source: one pre-copy round, streamed to the destination while the pod runs.
    PRE_DUMP = "pre-dump"
    # On the source: lock network, freeze, final dump streamed to the destination.
    DUMP = "dump"
    # On the destination: restore the pod's containers into the prepared network namespace.
    RESTORE = "restore"
    # Before the commit point, on either node: undo everything, source resumes.
    ABORT = "abort"
    # After the commit point, on the source: remove the frozen copy.
    FINALIZE = "finalize"
    # Post-copy, after the commit point, on the destination: wait until every page of the
    # pod's memory has arrived (a broken page stream stops the pod there).
    FILL = "fill"


class CheckpointCommand(Message):
    kind: Literal["CheckpointCommand"] = "CheckpointCommand"
    # The node whose checkpoint agent executes the step.
    node: NodeName
    step: CheckpointStep
    migration: MigrationRef
    pod: PodRef
    source_node: NodeName
    destination_node: NodeName
    strategy: MigrationStrategy
    # Pre-copy round number (pre-dump only).
    round: int | None = Field(default=None, ge=1)
    # Seconds the agent may spend on the step before giving up and reporting failure.
    timeout_seconds: float = Field(default=300, gt=0)

    def subject(self) -> str:
        return subjects.checkpoint_command(self.node, self.step)


class NetworkStep(StrEnum):
    # Destination: create the pod's netns with its IP and routes, unreachable from outside.
    PREPARE = "prepare"
    # Commit point: traffic for the IP reaches the destination; the source stops answering.
    COMMIT = "commit"
    # Undo prepare; the source keeps the IP.
    ABORT = "abort"
    # Source: clean up after a committed move.
    RELEASE = "release"


class NetworkCommand(Message):
    kind: Literal["NetworkCommand"] = "NetworkCommand"
    node: NodeName
    step: NetworkStep
    migration: MigrationRef
    pod: PodRef
    pod_ip: IPvAnyAddress
    source_node: NodeName
    destination_node: NodeName
    timeout_seconds: float = Field(default=60, gt=0)

    def subject(self) -> str:
        return subjects.network_command(self.node, self.step)
