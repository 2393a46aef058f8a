"""The coordinator's NATS wiring."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from clm.contracts import StepResult, streams, subjects
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.version import __version__

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM migration coordinator: owns every migration from request to completion. In this "
    "version it consumes the node agents' step results (logged and counted); the Migration "
    "resource, its state machine and RequestMigration commands arrive with the coordinator "
    "issue. Until then RequestMigration commands wait in the CLM_COMMANDS stream."
)


class CoordinatorSettings(ServiceSettings):
    pass


def build(settings: CoordinatorSettings) -> ServiceApp:
    app = ServiceApp(name="coordinator", version=__version__, settings=settings,
                     description=SUMMARY)
    results = Counter("clm_coordinator_step_results_total",
                      "Agent step results received, by agent, step and outcome.",
                      ["agent", "step", "ok"], registry=app.metrics.registry)

    @app.consumer(StepResult, durable="coordinator-step-results",
                  filter_subject=subjects.ALL_STEP_EVENTS, stream=streams.EVENTS,
                  description="Answers of the node agents to migration commands.")
    async def on_step_result(result: StepResult) -> None:
        results.labels(result.agent, result.step, str(result.ok).lower()).inc()
        log.info("agent step result", extra={
            "migration": f"{result.namespace}/{result.migration}", "agent": result.agent,
            "node": result.node, "step": result.step, "ok": result.ok, "error": result.error})

    return app
