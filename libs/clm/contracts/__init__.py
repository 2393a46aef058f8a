"""CLM's event and command contracts: one definition per message, used on both ends.

Publishers build a model and `encode` it; subscribers `decode` bytes into the model they
expect. Each model knows its NATS `subject()`; its `message_id` is the `Nats-Msg-Id`.
"""

from clm.contracts import protocol, subjects
from clm.contracts.base import REGISTRY, Message
from clm.contracts.codec import ContractError, decode, encode
from clm.contracts.commands import (
    CheckpointCommand,
    CheckpointStep,
    MigrationRef,
    NetworkCommand,
    NetworkStep,
    PodRef,
    RequestMigration,
)
from clm.contracts.events import (
    EVENT_TYPE,
    MIGRATION_EVENT_MODELS,
    AgentKind,
    DrainPlanned,
    EligibilityReason,
    MigrationFailed,
    MigrationFinished,
    MigrationReason,
    MigrationReconfigured,
    NodeCapabilities,
    NodeDrained,
    PlannedDrain,
    PlannedMove,
    PodCreateFailed,
    PodCreateFinished,
    PodEligibilityChanged,
    PreDumpFailed,
    PreDumpFinished,
    PreDumpSkipped,
    StepProgress,
    StepResult,
    step_result_for,
)
from clm.contracts.fields import Fallback, MigrationStrategy
from clm.contracts.streams import StreamSpec

__all__ = [
    "EVENT_TYPE",
    "MIGRATION_EVENT_MODELS",
    "REGISTRY",
    "AgentKind",
    "CheckpointCommand",
    "CheckpointStep",
    "ContractError",
    "EligibilityReason",
    "Fallback",
    "Message",
    "MigrationFailed",
    "MigrationFinished",
    "MigrationReason",
    "MigrationReconfigured",
    "MigrationRef",
    "MigrationStrategy",
    "NetworkCommand",
    "NetworkStep",
    "NodeCapabilities",
    "DrainPlanned",
    "NodeDrained",
    "PlannedDrain",
    "PlannedMove",
    "PodCreateFailed",
    "PodCreateFinished",
    "PodEligibilityChanged",
    "PodRef",
    "PreDumpFailed",
    "PreDumpFinished",
    "PreDumpSkipped",
    "RequestMigration",
    "StepProgress",
    "StepResult",
    "StreamSpec",
    "decode",
    "encode",
    "step_result_for",
    "protocol",
    "subjects",
]
