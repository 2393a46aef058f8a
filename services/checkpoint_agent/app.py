"""The checkpoint agent's NATS wiring: capabilities at start, checkpoint steps on command,
and the listener that receives other agents' images."""

from __future__ import annotations

import logging

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    NodeCapabilities,
    StepProgress,
    StepResult,
    step_result_for,
    streams,
    subjects,
)
from clm.runtime import ServiceApp
from clm.runtime.version import __version__
from services.checkpoint_agent.agent import CheckpointAgent
from services.checkpoint_agent.capabilities import CapabilityPublisher, advertised_host
from services.checkpoint_agent.config import AgentConfig
from services.checkpoint_agent.containerd import Containerd
from services.checkpoint_agent.criu_cache import kdat_cache_problem
from services.checkpoint_agent.metrics import AgentMetrics
from services.checkpoint_agent.page_relay import PageRelay
from services.checkpoint_agent.progress import ProgressReporter
from services.checkpoint_agent.receiver import ImageReceiver
from services.checkpoint_agent.restore_handler.server import RestoreHandlerServer
from services.checkpoint_agent.runc import Runc
from services.checkpoint_agent.runtime import ContainerRuntime
from services.checkpoint_agent.settings import CheckpointAgentSettings
from services.checkpoint_agent.tls import AgentTls

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


def agent_config(settings: CheckpointAgentSettings) -> AgentConfig:
    node = settings.node_name
    return AgentConfig(
        node=node,
        state_dir=settings.state_dir,
        image_dir=settings.image_dir / node,
        netns_dir=settings.netns_dir,
        criu=settings.criu_binary,
        tls=AgentTls(settings.agent_tls_dir) if settings.agent_tls_dir else None,
        lazy_restore=settings.lazy_restore,
        stream_dump=settings.stream_dump,
        container_log_dir=settings.container_log_dir,
        holdback=settings.holdback,
        transfer_connect_seconds=settings.transfer_connect_seconds,
        transfer_stall_seconds=settings.transfer_stall_seconds,
        node_netns=settings.netns_dir / settings.node_netns if settings.node_netns else None,
        checkpoint_archives=settings.checkpoint_archives,
        checkpoint_archive_dir=settings.checkpoint_archive_dir,
    )


def runtime_for(settings: CheckpointAgentSettings) -> tuple[ContainerRuntime, RestoreHandlerServer | None]:
    """containerd on Kubernetes nodes (CLM_CONTAINERD_SOCKET), else runc (the local node runtime)."""
    if settings.containerd_socket is None:
        return Runc(root=settings.runc_root, criu=settings.criu_binary), None
    runtime = Containerd(
        cri_socket=settings.containerd_socket,
        state_dir=settings.containerd_state_dir,
        runc_root=settings.containerd_runc_root,
        criu=settings.criu_binary,
    )
    handler = RestoreHandlerServer(
        settings.restore_handler_socket,
        lazy_pages=runtime.lazy_pages_daemon if settings.lazy_restore else None,
        kill=runtime.delete,
    )
    return runtime, handler


def build(settings: CheckpointAgentSettings) -> ServiceApp:
    app = ServiceApp(name="checkpoint-agent", version=__version__, settings=settings, description=SUMMARY)
    node = settings.node_name
    metrics = AgentMetrics(app.metrics.registry)
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
    config = agent_config(settings)
    runtime, handler = runtime_for(settings)
    app.publishes(
        StepProgress,
        subjects.migration_progress("{namespace}", "{migration}"),
        "How far a running transfer has got, a few times a second at most (plain NATS, not stored).",
    )
    progress = ProgressReporter(app.announce, node=node)
    agent = CheckpointAgent(config, runtime, app.node_capabilities, handler, progress)
    receiver = ImageReceiver(
        expected=agent.expected_transfers, tls=config.tls, received=metrics.bytes_received
    )
    relay = PageRelay(tls=config.tls, pages=agent.source.lazy, sent=metrics.pages_sent.inc)

    @app.on_start
    async def start_transfers_and_publish_capabilities() -> None:
        if (slow_criu := kdat_cache_problem()) is not None:
            log.warning("CRIU's kernel facts are not cached", extra={"why": slow_criu})
        if handler is not None:
            await handler.start()
        port = await receiver.start(settings.transfer_listen_host, settings.transfer_port)
        host = advertised_host(settings.transfer_advertise_host)
        pages_address = None
        if config.tls is not None:
            wanted = (
                settings.pages_port
                if settings.pages_port is not None
                else (port + 1 if settings.transfer_port else 0)
            )
            pages_port = await relay.start(settings.transfer_listen_host, wanted)
            pages_address = f"{host}:{pages_port}"
        publisher = CapabilityPublisher(
            app,
            node=node,
            criu=settings.criu_binary,
            transfer_address=f"{host}:{port}",
            pages_address=pages_address,
            runtime=runtime,
        )
        await publisher.publish()
        app.background(publisher.repeat(settings.capabilities_interval_seconds))

    @app.consumer(
        CheckpointCommand,
        durable=subjects.durable("checkpoint-agent", node),
        filter_subject=subjects.node_checkpoint_commands(node),
        stream=streams.COMMANDS,
        # Several migrations at once (steps of one migration are serialised by the agent).
        # A dump of a large pod may take minutes: the handler says it is still at it every
        # few seconds, so the ack wait stays short and a command an agent died on goes to
        # its successor within that wait (CLM_ACK_WAIT_SECONDS).
        max_workers=8,
        heartbeat_seconds=max(1.0, settings.ack_wait_seconds / 3),
        description="Checkpoint steps for pods on (or moving to) this node.",
    )
    async def on_command(command: CheckpointCommand) -> None:
        outcome = await agent.execute(command)
        metrics.observe(command.step, ok=outcome.ok, seconds=outcome.seconds, details=outcome.details)
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


__all__ = ["SUMMARY", "CheckpointAgentSettings", "build"]
