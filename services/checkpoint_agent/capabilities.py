"""What this node's CRIU can do, published as NodeCapabilities at start and every interval
after (the labeler unlabels a node whose agent goes quiet), with where the agent receives
images.

The report is also the agent's heartbeat, so it goes out every interval whatever the probe
is doing: the probe (several CRIU runs, seconds on a loaded node) runs beside it, and each
report carries the latest probe's findings. A probe that has not answered for
`STALE_INTERVALS` intervals makes the report say the node cannot take moves, and why."""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import time
from typing import Any

from clm.contracts import NodeCapabilities
from clm.runtime import ServiceApp
from clm.runtime.version import __version__
from services.checkpoint_agent.post_copy_setup import ensure_pipe_size, post_copy_problem
from services.checkpoint_agent.probe import normalise_arch, run_probe
from services.checkpoint_agent.runtime import ContainerRuntime

log = logging.getLogger(__name__)
# A probe still running after this many report intervals: the node is reported as not capable.
STALE_INTERVALS = 5


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
        # The latest probe's findings (NodeCapabilities fields), and since when one runs.
        self._found: dict[str, Any] = {
            "arch": normalise_arch(platform.machine()),
            "probe_ok": False,
            "problems": ["not probed yet"],
        }
        self._probing_since: float | None = None

    async def publish(self) -> None:
        """Probe, then report what the probe found."""
        await self._probe()
        await self._report()

    async def _probe(self) -> None:
        self._probing_since = time.monotonic()
        try:
            self._found = await self._findings()
        except Exception as exc:
            self._found = {**self._found, "probe_ok": False, "problems": [f"the CRIU probe failed: {exc}"]}
            raise
        finally:
            self._probing_since = None

    async def _findings(self) -> dict[str, Any]:
        probe = await run_probe(self.criu)
        if self.runtime is not None:
            probe.problems += await asyncio.to_thread(self.runtime.node_problems)
            probe.probe_ok = probe.probe_ok and not probe.problems
        post_copy = post_copy_problem(
            userfaultfd=probe.features.get("userfaultfd", False),
            pipe_problem=ensure_pipe_size(),
            pages_address=self.pages_address,
        )
        return {
            "arch": probe.arch,
            "criu_version": probe.criu_version,
            "probe_ok": probe.probe_ok,
            "cpuinfo_image_b64": probe.cpuinfo_image_b64,
            "problems": probe.problems,
            "post_copy": post_copy is None,
            "post_copy_problem": post_copy,
            **probe.features,
        }

    async def _report(self, *, stale_after: float | None = None) -> None:
        found = dict(self._found)
        probing = self._probing_since
        if stale_after is not None and probing is not None and time.monotonic() - probing > stale_after:
            why = f"the CRIU probe has not answered for {time.monotonic() - probing:.0f}s"
            found.update(probe_ok=False, problems=[*found.get("problems", []), why])
        await self.app.publish(
            NodeCapabilities(
                node=self.node,
                agent_version=__version__,
                transfer_address=self.transfer_address,
                pages_address=self.pages_address,
                clones_restored_by_kubelet=self.runtime is not None and self.runtime.restores_through_handler,
                **found,
            )
        )
        log.info(
            "capabilities published",
            extra={
                "probe_ok": found.get("probe_ok"),
                "transfer_address": self.transfer_address,
                "pages_address": self.pages_address,
                "post_copy": found.get("post_copy_problem") or "available",
                # Why the probe failed, when it did (the labeler then leaves the node unlabeled).
                "problems": found.get("problems"),
                **{
                    k: v
                    for k, v in found.items()
                    if isinstance(v, bool) and k not in ("probe_ok", "post_copy")
                },
            },
        )

    async def repeat(self, interval_seconds: float) -> None:
        """Report every interval; probe again beside it, one probe at a time."""
        probing: asyncio.Task[None] | None = None
        while True:
            await asyncio.sleep(interval_seconds)
            if probing is None or probing.done():
                if probing is not None and not probing.cancelled() and probing.exception() is not None:
                    log.warning("the CRIU probe failed", extra={"error": str(probing.exception())[:300]})
                probing = asyncio.create_task(self._probe())
            try:
                await self._report(stale_after=STALE_INTERVALS * interval_seconds)
            except Exception as exc:  # - NATS away for a moment: the next round says it again
                log.warning("capabilities not published", extra={"error": str(exc)[:300]})
