"""One realistic example of every message kind: for tests, docs and benchmarks."""

from __future__ import annotations

from clm.contracts import commands as c
from clm.contracts import events as e
from clm.contracts.base import Message
from clm.contracts.fields import Fallback, MigrationStrategy

_MIG = {
    "namespace": "games",
    "migration": "minecraft-0-x7k2p",
    "migration_uid": "6f1c2b7e-0d7a-4c55-9a51-3f7a8f7f1b20",
    "pod": "minecraft-0",
    "source_node": "ip-10-0-1-17.ec2.internal",
    "destination_node": "ip-10-0-1-42.ec2.internal",
}
_MIG_REF = c.MigrationRef(
    namespace="games", name="minecraft-0-x7k2p", uid="6f1c2b7e-0d7a-4c55-9a51-3f7a8f7f1b20"
)
_POD_REF = c.PodRef(namespace="games", name="minecraft-0", uid="0b8e4f7a-5f1e-4c0e-8d5e-2b9f3c1d7a66")


def examples() -> list[Message]:
    checkpoint = c.CheckpointCommand(
        node="ip-10-0-1-17.ec2.internal",
        step=c.CheckpointStep.DUMP,
        migration=_MIG_REF,
        pod=_POD_REF,
        source_node=_MIG["source_node"],
        destination_node=_MIG["destination_node"],
        strategy=MigrationStrategy.STOP_AND_COPY,
    )
    return [
        e.PreDumpSkipped(
            **_MIG,
            sequence=1,
            why="dirty-memory tracking unavailable on source node",
            message="Pre-dump skipped: no dirty-memory tracking on this kernel",
        ),
        e.PreDumpFinished(**_MIG, sequence=2, round=1, pages=262144, bytes=1073741824, duration_seconds=1.84),
        e.PreDumpFailed(**_MIG, sequence=3, round=2, error="criu pre-dump exited with 1"),
        e.MigrationReconfigured(
            **_MIG,
            sequence=4,
            previous_strategy=MigrationStrategy.PRE_COPY,
            strategy=MigrationStrategy.STOP_AND_COPY,
            why="pre-dump round 2 failed",
        ),
        e.PodCreateFinished(**_MIG, sequence=5, clone_pod="minecraft-0", node=_MIG["destination_node"]),
        e.PodCreateFailed(
            **_MIG,
            sequence=6,
            clone_pod="minecraft-0",
            node=_MIG["destination_node"],
            error="node has insufficient memory",
        ),
        e.MigrationFinished(
            **_MIG,
            sequence=7,
            clone_pod="minecraft-0",
            strategy=MigrationStrategy.STOP_AND_COPY,
            freeze_seconds=0.41,
            total_seconds=3.2,
            bytes_transferred=1073741824,
            phases={"freezing": 0.01, "frozen": 0.4, "memdump": 0.22, "memwrite": 0.1, "restore": 0.12},
        ),
        e.MigrationFailed(
            **_MIG,
            sequence=8,
            error="restore failed: criu exited with 1",
            stage="restore",
            fallback=Fallback.EVICT,
        ),
        e.StepResult(
            namespace="games",
            migration="minecraft-0-x7k2p",
            migration_uid=_MIG["migration_uid"],
            agent=e.AgentKind.CHECKPOINT,
            node=_MIG["source_node"],
            step="dump",
            command_id=checkpoint.message_id,
            ok=True,
            duration_seconds=0.4,
            details={"pages": 1024, "bytes": 4194304},
        ),
        e.StepProgress(
            namespace="games",
            migration="minecraft-0-x7k2p",
            migration_uid=_MIG["migration_uid"],
            agent=e.AgentKind.CHECKPOINT,
            node=_MIG["source_node"],
            step="dump",
            bytes_done=268435456,
            bytes_total=1073741824,
            elapsed_seconds=0.9,
        ),
        e.NodeCapabilities(
            node="ip-10-0-1-17.ec2.internal",
            agent_version="0.1.0",
            arch="amd64",
            criu_version="4.2.1",
            probe_ok=True,
            userfaultfd=True,
            tcp_established=True,
            cpuinfo_image_b64="AAAA",
        ),
        e.NodeDrained(node="ip-10-0-1-17.ec2.internal", pods_migrated=3, pods_evicted=1),
        e.DrainPlanned(
            mode="default",
            dry_run=True,
            nodes=3,
            pods=40,
            nodes_the_plan_would_drain=1,
            new_drains=[
                e.PlannedDrain(
                    node="ip-10-0-1-17.ec2.internal",
                    why="bin-packing",
                    saving_per_hour=0.19,
                    moves=[
                        e.PlannedMove(
                            namespace="games",
                            pod="minecraft-0",
                            action="live-migrate",
                            destination="ip-10-0-2-31.ec2.internal",
                        )
                    ],
                )
            ],
        ),
        e.PodEligibilityChanged(
            namespace="games",
            pod="minecraft-0",
            eligible=False,
            reasons=[e.EligibilityReason(code="tty", message="container 'server' has tty: true")],
        ),
        c.RequestMigration(
            namespace="games", pod="minecraft-0", destination_node="ip-10-0-1-42.ec2.internal"
        ),
        checkpoint,
        c.NetworkCommand(
            node=_MIG["destination_node"],
            step=c.NetworkStep.PREPARE,
            migration=_MIG_REF,
            pod=_POD_REF,
            pod_ip="10.0.1.200",
            source_node=_MIG["source_node"],
            destination_node=_MIG["destination_node"],
        ),
    ]
