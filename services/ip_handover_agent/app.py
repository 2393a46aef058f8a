"""The IP-handover agent's NATS wiring: network commands run on the routed backend."""

from __future__ import annotations

import asyncio
import time

from clm.contracts import (
    AgentKind,
    NetworkCommand,
    NetworkStep,
    StepResult,
    step_result_for,
    streams,
    subjects,
)
from clm.runtime import ServiceApp
from clm.runtime.settings import NodeAgentSettings
from clm.runtime.version import __version__
from services.ip_handover_agent.routed import NetworkStepError, PodNet, RoutedBackend

SUMMARY = (
    "CLM IP-handover agent: moves a migrating pod's IP from the source node to the destination. "
    "Commands addressed to this node: prepare (destination: the pod's network namespace with its "
    "IP, not yet reachable), commit (source: stop answering for the IP; destination, right after: "
    "route it here and announce it with a gratuitous ARP), abort (destination: undo prepare), "
    "release (source: clean up). Backend: Linux routed (proxy ARP on a shared segment); the AWS "
    "VPC backend and the chained CNI plugin are not there yet."
)


class IpHandoverSettings(NodeAgentSettings):
    # The interface facing the segment other nodes and clients share.
    uplink_interface: str = "eth0"
    # Tests and the sandbox: the network namespace standing for this node (None on a real
    # node, where the agent runs in the host's namespace).
    node_netns: str | None = None


def _action(command: NetworkCommand) -> str:
    """What this node does for the command (prepare/abort go to the destination, release to
    the source, commit to both: the source withdraws, then the destination announces)."""
    on_source = command.node == command.source_node
    step = NetworkStep(command.step)
    if step is NetworkStep.COMMIT:
        return "withdraw" if on_source else "announce"
    wanted_on_source = step is NetworkStep.RELEASE
    if on_source != wanted_on_source:
        side = "source" if wanted_on_source else "destination"
        raise NetworkStepError(f"{step} is a {side}-node step, but {command.node} is not the {side}")
    return {NetworkStep.PREPARE: "prepare", NetworkStep.ABORT: "abort", NetworkStep.RELEASE: "release"}[step]


def build(settings: IpHandoverSettings) -> ServiceApp:
    app = ServiceApp(name="ip-handover-agent", version=__version__, settings=settings, description=SUMMARY)
    node = settings.node_name
    backend = RoutedBackend(node=node, uplink=settings.uplink_interface, node_netns=settings.node_netns)
    app.publishes(
        StepResult,
        subjects.migration_step("{namespace}", "{migration}", AgentKind.NETWORK, "{step}"),
        "The answer to each network command.",
    )

    @app.consumer(
        NetworkCommand,
        durable=subjects.durable("ip-handover-agent", node),
        filter_subject=subjects.node_network_commands(node),
        stream=streams.COMMANDS,
        description="Network steps for pods moving from or to this node.",
    )
    async def on_command(command: NetworkCommand) -> None:
        started = time.perf_counter()
        pod = PodNet(uid=command.pod.uid, ip=str(command.pod_ip))
        try:
            action = _action(command)
            # The steps shell out to iproute2: keep the event loop (and health checks) free.
            await asyncio.to_thread(getattr(backend, action), pod)
        except NetworkStepError as exc:
            result = step_result_for(
                command,
                agent=AgentKind.NETWORK,
                ok=False,
                error=str(exc),
                duration_seconds=time.perf_counter() - started,
            )
        else:
            result = step_result_for(
                command,
                agent=AgentKind.NETWORK,
                ok=True,
                duration_seconds=time.perf_counter() - started,
                details={"action": action, "pod_ip": pod.ip},
            )
        await app.publish(result)

    return app
