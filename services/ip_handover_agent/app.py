"""The IP-handover agent's NATS wiring."""

from __future__ import annotations

from clm.contracts import AgentKind, NetworkCommand, StepResult, step_result_for, streams, subjects
from clm.runtime import ServiceApp
from clm.runtime.settings import NodeAgentSettings
from clm.runtime.version import __version__

SUMMARY = (
    "CLM IP-handover agent: takes network commands (prepare, commit, abort, release) "
    "addressed to this node. In this version it refuses every step with a StepResult saying "
    "so; the Linux-routed and AWS VPC backends arrive with the IP-handover issue."
)


class IpHandoverSettings(NodeAgentSettings):
    pass


def build(settings: IpHandoverSettings) -> ServiceApp:
    app = ServiceApp(name="ip-handover-agent", version=__version__, settings=settings,
                     description=SUMMARY)
    node = settings.node_name
    app.publishes(StepResult, subjects.migration_step("{namespace}", "{migration}",
                                                      AgentKind.NETWORK, "{step}"),
                  "The answer to each network command.")

    @app.consumer(NetworkCommand, durable=subjects.durable("ip-handover-agent", node),
                  filter_subject=subjects.node_network_commands(node), stream=streams.COMMANDS,
                  description="Network steps for pods moving from or to this node.")
    async def on_command(command: NetworkCommand) -> None:
        await app.publish(step_result_for(
            command, agent=AgentKind.NETWORK, ok=False, duration_seconds=0.0,
            error=f"network step {command.step!r} is not supported by agent {__version__}",
        ))

    return app
