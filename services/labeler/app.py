"""The labeler's NATS wiring."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from clm.contracts import NodeCapabilities, PodEligibilityChanged, streams, subjects
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.version import __version__

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM labeler: assesses workloads and nodes and keeps the label "
    "live.cast.ai/migration-enabled=true exactly on the eligible ones. In this version it "
    "tracks the checkpoint agents' NodeCapabilities (which nodes could carry the label); "
    "watching and labeling Kubernetes pods and nodes arrives with the labeler issue."
)


class LabelerSettings(ServiceSettings):
    pass


def build(settings: LabelerSettings) -> ServiceApp:
    app = ServiceApp(name="labeler", version=__version__, settings=settings, description=SUMMARY)
    capable = Gauge("clm_labeler_node_capable",
                    "1 when the node's checkpoint agent reports a working probe, else 0.",
                    ["node"], registry=app.metrics.registry)
    app.publishes(PodEligibilityChanged, subjects.pod_eligibility("{namespace}", "{pod}"),
                  "A pod became eligible or stopped being eligible, with the reasons.")

    @app.consumer(NodeCapabilities, durable="labeler-node-capabilities",
                  filter_subject=subjects.ALL_NODE_CAPABILITIES, stream=streams.EVENTS,
                  description="What each node's checkpoint agent can do.")
    async def on_capabilities(caps: NodeCapabilities) -> None:
        capable.labels(caps.node).set(1 if caps.probe_ok else 0)
        log.info("node capabilities", extra={"node": caps.node, "probe_ok": caps.probe_ok,
                                             "problems": caps.problems})

    return app
