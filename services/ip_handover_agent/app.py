"""The IP-handover agent's NATS wiring: network commands run on the routed backend."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Literal, Protocol

from clm.contracts import (
    AgentKind,
    NetworkCommand,
    StepResult,
    protocol,
    step_result_for,
    streams,
    subjects,
)
from clm.contracts.protocol import StepFailed
from clm.runtime import ServiceApp
from clm.runtime.kubeapi import api_client
from clm.runtime.settings import NodeAgentSettings, SettingsError
from clm.runtime.version import __version__
from services.ip_handover_agent import imds
from services.ip_handover_agent.aws_network import AwsVpcNetwork
from services.ip_handover_agent.cni import KubeLookup
from services.ip_handover_agent.cni_server import CniServer
from services.ip_handover_agent.ledger import Ledger, reconcile_actions
from services.ip_handover_agent.routed import PodNet, RoutedBackend

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM IP-handover agent: moves a migrating pod's IP from the source node to the destination. "
    "Commands addressed to this node: prepare (destination: the pod's network namespace with its "
    "IP, not yet reachable), commit (source: stop answering for the IP; destination, right after: "
    "route it here and announce it with a gratuitous ARP), abort (destination: undo prepare), "
    "release (source: clean up). Backends: Linux routed (proxy ARP on a shared segment) or AWS "
    "VPC (EC2 reassigns the secondary IP between the nodes' ENIs). What it did is kept on disk: a "
    "restarted agent finishes interrupted steps instead of leaking addresses or routes."
)


class IpHandoverSettings(NodeAgentSettings):
    # The interface facing the segment other nodes and clients share.
    uplink_interface: str = "eth0"
    # Tests and the sandbox: the network namespace standing for this node (None on a real
    # node, where the agent runs in the host's namespace).
    node_netns: str | None = None
    # Records of what the agent did to the node (reconciled at start).
    state_dir: Path = Path("/var/lib/clm/ip-handover-agent")
    network_backend: Literal["routed", "aws-vpc"] = "routed"
    # Kubernetes nodes with clm-cni: a clone's network is wired by its CNI ADD, not by prepare.
    pods_wired_by_cni: bool = False
    # Kubernetes nodes: where the node's clm-cni shim hands its CNI calls to this agent, which
    # runs the plugin with its own API access (None: no shim on this node).
    cni_socket: Path | None = None
    # The API the plugin reads pods from (None: in-cluster); needed with cni_socket.
    kubeconfig: Path | None = None
    # aws-vpc: this node's ENI that carries pod IPs and the region (unset: asked of the instance
    # metadata service, as a DaemonSet must), and (tests) the EC2 endpoint.
    aws_eni_id: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_imds_endpoint: str = imds.DEFAULT_ENDPOINT
    # aws-vpc: the node uses custom networking (ENIConfig); the VPC CNI's prefix delegation.
    aws_custom_network: bool = False
    aws_prefix_delegation: bool = False

    def aws_instance_network(self) -> imds.InstanceNetwork:
        """The ENI and region the aws-vpc backend works with: from the settings where both are
        given, otherwise from the instance metadata service."""
        if self.aws_eni_id and self.aws_region:
            return imds.InstanceNetwork(eni_id=self.aws_eni_id, region=self.aws_region)
        try:
            found = imds.discover(self.aws_imds_endpoint)
        except imds.ImdsError as exc:
            raise SettingsError(
                "CLM_NETWORK_BACKEND=aws-vpc: CLM_AWS_ENI_ID and CLM_AWS_REGION are not both set and the "
                f"instance metadata service did not answer ({exc}); set them, or run the agent on the EC2 "
                "instance's host network so it can reach the metadata service"
            ) from None
        return imds.InstanceNetwork(
            eni_id=self.aws_eni_id or found.eni_id, region=self.aws_region or found.region
        )


class Backend(Protocol):
    def prepare(self, pod: PodNet) -> None: ...
    def announce(self, pod: PodNet) -> None: ...
    def withdraw(self, pod: PodNet) -> None: ...
    def abort(self, pod: PodNet) -> None: ...
    def release(self, pod: PodNet) -> None: ...
    def routed_ips(self) -> set[str]: ...


def make_backend(settings: IpHandoverSettings) -> Backend:
    local = RoutedBackend(
        node=settings.node_name,
        uplink=settings.uplink_interface,
        node_netns=settings.node_netns,
        segment_announce=settings.network_backend == "routed",
        wired_by_cni=settings.pods_wired_by_cni,
    )
    if settings.network_backend == "routed":
        return local
    instance = settings.aws_instance_network()
    return AwsVpcNetwork.from_settings(
        local=local,
        node=settings.node_name,
        eni_id=instance.eni_id,
        region=instance.region,
        endpoint_url=settings.aws_endpoint_url,
        custom_network=settings.aws_custom_network,
        prefix_delegation=settings.aws_prefix_delegation,
    )


def build(settings: IpHandoverSettings) -> ServiceApp:
    app = ServiceApp(name="ip-handover-agent", version=__version__, settings=settings, description=SUMMARY)
    node = settings.node_name
    backend = make_backend(settings)
    ledger = Ledger(settings.state_dir / node)

    # One action at a time per pod: a command redelivered while an earlier one still runs
    # (or an abort sent after a step timed out) waits instead of racing it.
    locks: dict[str, asyncio.Lock] = {}

    async def act(action: str, pod: PodNet) -> None:
        def run() -> None:
            ledger.begin(pod.uid, pod.ip, action)
            getattr(backend, action)(pod)
            ledger.finish(pod.uid, action)

        async with locks.setdefault(pod.uid, asyncio.Lock()):
            # The steps shell out to iproute2: keep the event loop (and health checks) free.
            await asyncio.to_thread(run)

    if settings.cni_socket is not None:
        # A clear error at start, not at a pod's first ADD, when the API is not configured.
        lookup = KubeLookup(api=api_client(settings.kubeconfig, "ip-handover-agent"))
        cni_server = CniServer(settings.cni_socket, lookup)

        @app.on_start
        async def serve_cni() -> None:
            await cni_server.start()
            log.info("serving the node's clm-cni", extra={"socket": str(settings.cni_socket)})

        @app.on_stop
        async def stop_cni() -> None:
            await cni_server.stop()

    @app.before_consuming
    async def reconcile() -> None:
        """Finish what a dead agent began, before any command can touch the same pods. A
        record that cannot be reconciled is reported and left: the agent still starts, and
        the coordinator's retry or abort of that step reaches it."""
        routed = await asyncio.to_thread(backend.routed_ips)
        for action, record in reconcile_actions(ledger.all(), routed):
            pod = PodNet(uid=record.uid, ip=record.ip)
            try:
                await act(action, pod)
                log.info("reconciled", extra={"action": action, "pod_uid": pod.uid, "pod_ip": pod.ip})
            except Exception as exc:  # - one bad record must not keep the agent down
                log.warning(
                    "reconcile failed", extra={"action": action, "pod_uid": pod.uid, "error": repr(exc)}
                )

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
            # Which node plays which role, and what each does, is the protocol's.
            action = protocol.step_of(AgentKind.NETWORK, command).action
            await act(action, pod)
        except StepFailed as exc:
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
