"""What this node's CRIU can do, published as NodeCapabilities at start and every interval
after (the labeler unlabels a node whose agent goes quiet), with where the agent receives
images."""

from __future__ import annotations

import asyncio
import logging
import socket

from clm.contracts import NodeCapabilities
from clm.runtime import ServiceApp
from clm.runtime.version import __version__
from services.checkpoint_agent.post_copy_setup import ensure_pipe_size, post_copy_problem
from services.checkpoint_agent.probe import run_probe
from services.checkpoint_agent.runtime import ContainerRuntime

log = logging.getLogger(__name__)


def advertised_host(configured: str | None) -> str:
    """The address other nodes' agents reach this one at: as configured (on Kubernetes:
    status.hostIP), else this host's name resolved."""
    if configured:
        return configured
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class CapabilityPublisher:
    def __init__(
        self,
        app: ServiceApp,
        *,
        node: str,
        criu: str,
        transfer_address: str,
        pages_address: str | None = None,
        runtime: ContainerRuntime | None = None,
    ) -> None:
        self.app, self.node, self.criu, self.transfer_address = app, node, criu, transfer_address
        self.pages_address = pages_address
        # What the node's container runtime lacks for moves (containerd: CLM's handler).
        self.runtime = runtime

    async def publish(self) -> None:
        probe = await run_probe(self.criu)
        if self.runtime is not None:
            probe.problems += await asyncio.to_thread(self.runtime.node_problems)
            probe.probe_ok = probe.probe_ok and not probe.problems
        post_copy = post_copy_problem(
            userfaultfd=probe.features.get("userfaultfd", False),
            pipe_problem=ensure_pipe_size(),
            pages_address=self.pages_address,
        )
        if post_copy is None and self.runtime is not None and self.runtime.restores_through_handler:
            post_copy = "post-copy is not available on containerd nodes yet"
        await self.app.publish(
            NodeCapabilities(
                node=self.node,
                agent_version=__version__,
                arch=probe.arch,
                criu_version=probe.criu_version,
                probe_ok=probe.probe_ok,
                cpuinfo_image_b64=probe.cpuinfo_image_b64,
                problems=probe.problems,
                transfer_address=self.transfer_address,
                pages_address=self.pages_address,
                post_copy=post_copy is None,
                post_copy_problem=post_copy,
                clones_restored_by_kubelet=self.runtime is not None and self.runtime.restores_through_handler,
                **probe.features,
            )
        )
        log.info(
            "capabilities published",
            extra={
                "probe_ok": probe.probe_ok,
                "transfer_address": self.transfer_address,
                "post_copy": post_copy or "available",
                # Why the probe failed, when it did (the labeler then leaves the node unlabeled).
                "problems": probe.problems,
                **probe.features,
            },
        )

    async def repeat(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.publish()
            except Exception as exc:  # - NATS away for a moment: the next round says it again
                log.warning("capabilities not published", extra={"error": str(exc)[:300]})
