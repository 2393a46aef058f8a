"""The checkpoint agent's NATS wiring: capabilities at start, checkpoint steps on command,
and the listener that receives other agents' images."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from nats.js.errors import NotFoundError
from prometheus_client import Counter, Histogram
from pydantic import Field, SecretStr, model_validator

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    NodeCapabilities,
    StepResult,
    decode,
    step_result_for,
    streams,
    subjects,
)
from clm.runtime import ServiceApp
from clm.runtime.settings import NodeAgentSettings
from clm.runtime.version import __version__
from services.checkpoint_agent.agent import AgentConfig, CheckpointAgent
from services.checkpoint_agent.probe import run_probe
from services.checkpoint_agent.runc import Runc
from services.checkpoint_agent.transfer import TransferError, receive_directory

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM node checkpoint agent: probes what CRIU can do on this node and publishes it "
    "(NodeCapabilities), and executes checkpoint steps for pods leaving or arriving on this "
    "node: check-cpu (destination, before any freeze), dump (source: network lock, freeze, "
    "CRIU dump of every container of the pod, images streamed to the destination agent over "
    "an authenticated channel; rolled back at once on failure), restore (destination, into the "
    "pod's prepared network namespace), abort (before the commit point: the source runs the "
    "pod again, the destination is cleaned), finalize (after it: the source's images go)."
)


class CheckpointAgentSettings(NodeAgentSettings):
    criu_binary: str = "criu"
    # Containers are runc containers under this state root (the local node runtime).
    runc_root: Path | None = None
    state_dir: Path = Path("/var/lib/clm/checkpoint-agent")
    # Checkpoint images; a tmpfs makes the dump faster (it holds a pod's memory while moving).
    image_dir: Path = Path("/var/lib/clm/checkpoint-agent/images")
    netns_dir: Path = Path("/var/run/netns")
    # Tests and the sandbox: the network namespace standing for this node.
    node_netns: str | None = None
    # Copy the packets a frozen pod misses and send them again when it runs (see holdback.py).
    holdback: bool = True
    # Restore memory lazily (CRIU lazy-pages from the received images, over userfaultfd): the
    # pages are filled faster than CRIU's eager restore reads them. Falls back to eager.
    lazy_restore: bool = True
    # The local runc runtime only (the sandbox): where restored containers' output goes, one
    # CRI log file per container id, as the node's runtime keeps it. Unset: discarded.
    # (On Kubernetes nodes the container runtime keeps pod logs itself.)
    container_log_dir: Path | None = None
    transfer_listen_host: str = "0.0.0.0"
    # 0 picks a free port (tests); the published address carries the real one.
    transfer_port: int = Field(default=7400, ge=0, le=65535)
    # The address other nodes' agents reach this one at (on Kubernetes: status.hostIP).
    transfer_advertise_host: str | None = None
    transfer_secret_file: Path | None = None
    transfer_secret: SecretStr | None = None
    # NodeCapabilities is repeated this often; the labeler unlabels a node whose agent goes quiet.
    capabilities_interval_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _secret_readable(self) -> CheckpointAgentSettings:
        if self.transfer_secret_file is not None and not self.transfer_secret_file.is_file():
            raise ValueError(f"CLM_TRANSFER_SECRET_FILE: no such file {str(self.transfer_secret_file)!r}")
        return self

    def secret(self) -> bytes | None:
        if self.transfer_secret_file is not None:
            return self.transfer_secret_file.read_bytes().strip() or None
        if self.transfer_secret is not None:
            return self.transfer_secret.get_secret_value().encode() or None
        return None


class AgentMetrics:
    def __init__(self, app: ServiceApp) -> None:
        r = app.metrics.registry
        self.step_seconds = Histogram(
            "clm_checkpoint_step_seconds",
            "Time to execute a checkpoint step.",
            ["step", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.phase_seconds = Histogram(
            "clm_checkpoint_phase_seconds",
            "Per-phase time of dumps and restores (freezing, frozen, memdump, memwrite, transfer, restore).",
            ["phase"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.bytes_sent = Counter(
            "clm_checkpoint_bytes_sent_total", "Checkpoint image bytes streamed to other agents.", registry=r
        )
        self.bytes_received = Counter(
            "clm_checkpoint_bytes_received_total",
            "Checkpoint image bytes received from other agents.",
            registry=r,
        )
        self.pages_written = Counter(
            "clm_checkpoint_pages_written_total", "Memory pages CRIU wrote in dumps.", registry=r
        )

    def observe(self, step: str, ok: bool, seconds: float, details: dict) -> None:
        self.step_seconds.labels(step=step, outcome="ok" if ok else "failed").observe(seconds)
        if not ok or details.get("repeated"):
            return
        for key, value in details.items():
            if key.endswith("_seconds") and isinstance(value, int | float):
                self.phase_seconds.labels(phase=key.removesuffix("_seconds")).observe(value)
        if step == "dump":
            self.bytes_sent.inc(float(details.get("bytes", 0)))
            self.pages_written.inc(float(details.get("pages_written", 0)))


def _advertised_host(settings: CheckpointAgentSettings) -> str:
    if settings.transfer_advertise_host:
        return settings.transfer_advertise_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def build(settings: CheckpointAgentSettings) -> ServiceApp:  # type: ignore[override]
    app = ServiceApp(name="checkpoint-agent", version=__version__, settings=settings, description=SUMMARY)
    node = settings.node_name
    metrics = AgentMetrics(app)
    app.publishes(
        NodeCapabilities,
        subjects.node_capabilities(node),
        "What CRIU can do on this node and where its agent receives images; sent at start.",
    )
    app.publishes(
        StepResult,
        subjects.migration_step("{namespace}", "{migration}", AgentKind.CHECKPOINT, "{step}"),
        "The answer to each checkpoint command, with its measurements in details.",
    )

    async def capabilities(of_node: str) -> NodeCapabilities | None:
        try:
            raw = await app.js.get_last_msg(streams.EVENTS.name, subjects.node_capabilities(of_node))
        except NotFoundError:
            return None
        return decode(raw.data or b"", NodeCapabilities)

    agent = CheckpointAgent(
        AgentConfig(
            node=node,
            state_dir=settings.state_dir,
            image_dir=settings.image_dir / node,
            netns_dir=settings.netns_dir,
            criu=settings.criu_binary,
            secret=settings.secret(),
            lazy_restore=settings.lazy_restore,
            container_log_dir=settings.container_log_dir,
            holdback=settings.holdback,
            node_netns=settings.netns_dir / settings.node_netns if settings.node_netns else None,
        ),
        Runc(root=settings.runc_root, criu=settings.criu_binary),
        capabilities,
    )

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if not agent.config.secret:
                raise TransferError("no transfer secret configured on this node")
            migration, stats = await receive_directory(
                reader, writer, destination_for=agent.expected_transfers, secret=agent.config.secret
            )
            metrics.bytes_received.inc(stats.bytes)
            log.info(
                "images received",
                extra={
                    "migration": migration,
                    "bytes": stats.bytes,
                    "mib_per_s": round(stats.mib_per_s, 1),
                    "peer": str(peer),
                },
            )
        except (TransferError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.warning("transfer refused or failed", extra={"peer": str(peer), "error": str(exc)})
        finally:
            writer.close()

    @app.on_start
    async def start_transfers_and_publish_capabilities() -> None:
        server = await asyncio.start_server(receive, settings.transfer_listen_host, settings.transfer_port)
        port = server.sockets[0].getsockname()[1]
        address = f"{_advertised_host(settings)}:{port}"

        async def publish_probe() -> None:
            probe = await run_probe(settings.criu_binary)
            await app.publish(
                NodeCapabilities(
                    node=node,
                    agent_version=__version__,
                    arch=probe.arch,
                    criu_version=probe.criu_version,
                    probe_ok=probe.probe_ok,
                    cpuinfo_image_b64=probe.cpuinfo_image_b64,
                    problems=probe.problems,
                    transfer_address=address,
                    **probe.features,
                )
            )
            log.info(
                "capabilities published",
                extra={"probe_ok": probe.probe_ok, "transfer_address": address, **probe.features},
            )

        async def repeat() -> None:
            while True:
                await asyncio.sleep(settings.capabilities_interval_seconds)
                try:
                    await publish_probe()
                except Exception as exc:  # - NATS away for a moment: the next round says it again
                    log.warning("capabilities not published", extra={"error": str(exc)[:300]})

        await publish_probe()
        app.background(repeat())

    @app.consumer(
        CheckpointCommand,
        durable=subjects.durable("checkpoint-agent", node),
        filter_subject=subjects.node_checkpoint_commands(node),
        stream=streams.COMMANDS,
        # Several migrations at once (steps of one migration are serialised by
        # the agent); a dump of a large pod may take minutes before it is acked.
        max_workers=8,
        ack_wait_seconds=900,
        description="Checkpoint steps for pods on (or moving to) this node.",
    )
    async def on_command(command: CheckpointCommand) -> None:
        outcome = await agent.execute(command)
        metrics.observe(command.step, outcome.ok, outcome.seconds, outcome.details)
        if not outcome.ok:
            log.warning(
                "checkpoint step failed",
                extra={"step": command.step, "error": outcome.error, "migration": command.migration.name},
            )
        await app.publish(
            step_result_for(
                command,
                agent=AgentKind.CHECKPOINT,
                ok=outcome.ok,
                duration_seconds=outcome.seconds,
                error=outcome.error,
                details=outcome.details,
            )
        )

    return app
