"""The checkpoint agent's NATS wiring."""

from __future__ import annotations

import logging

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    NodeCapabilities,
    StepResult,
    step_result_for,
    streams,
    subjects,
)
from clm.runtime import ServiceApp
from clm.runtime.settings import NodeAgentSettings
from clm.runtime.version import __version__
from services.checkpoint_agent.probe import run_probe

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM node checkpoint agent: probes what CRIU can do on this node and publishes it "
    "(NodeCapabilities), and takes checkpoint commands addressed to this node. In this "
    "version it refuses every migration step with a StepResult saying so; checkpoint, "
    "streaming and restore arrive with the checkpoint-agent issue."
)


class CheckpointAgentSettings(NodeAgentSettings):
    criu_binary: str = "criu"


def build(settings: CheckpointAgentSettings) -> ServiceApp:  # type: ignore[override]
    app = ServiceApp(name="checkpoint-agent", version=__version__, settings=settings,
                     description=SUMMARY)
    node = settings.node_name
    app.publishes(NodeCapabilities, subjects.node_capabilities(node),
                  "What CRIU can do on this node; sent at start.")
    app.publishes(StepResult, subjects.migration_step("{namespace}", "{migration}",
                                                      AgentKind.CHECKPOINT, "{step}"),
                  "The answer to each checkpoint command.")

    @app.on_start
    async def publish_capabilities() -> None:
        probe = await run_probe(settings.criu_binary)
        await app.publish(NodeCapabilities(
            node=node, agent_version=__version__, arch=probe.arch, criu_version=probe.criu_version,
            probe_ok=probe.probe_ok, cpuinfo_image_b64=probe.cpuinfo_image_b64,
            problems=probe.problems, **probe.features,
        ))
        log.info("capabilities published", extra={"probe_ok": probe.probe_ok, **probe.features})

    @app.consumer(CheckpointCommand, durable=subjects.durable("checkpoint-agent", node),
                  filter_subject=subjects.node_checkpoint_commands(node), stream=streams.COMMANDS,
                  description="Checkpoint steps for pods on (or moving to) this node.")
    async def on_command(command: CheckpointCommand) -> None:
        await app.publish(step_result_for(
            command, agent=AgentKind.CHECKPOINT, ok=False, duration_seconds=0.0,
            error=f"checkpoint step {command.step!r} is not supported by agent {__version__}",
        ))

    return app
