"""The evictor-planner's NATS wiring."""

from __future__ import annotations

import logging
from typing import Literal

from prometheus_client import Counter

from clm.contracts import (
    MIGRATION_EVENT_MODELS,
    MigrationReason,
    NodeDrained,
    RequestMigration,
    streams,
    subjects,
)
from clm.contracts.events import MigrationEvent
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.version import __version__

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM evictor-planner: bin-packs the cluster and, per the Evictor's label matrix, "
    "live-migrates, evicts or leaves each pod of the nodes it drains. In this version it "
    "follows migration outcomes (MigrationFinished / MigrationFailed, the input of its "
    "back-off); snapshots, planning and draining arrive with the planner issue."
)


class PlannerSettings(ServiceSettings):
    mode: Literal["default", "aggressive"] = "default"
    dry_run: bool = False


def build(settings: PlannerSettings) -> ServiceApp:
    app = ServiceApp(name="evictor-planner", version=__version__, settings=settings,
                     description=SUMMARY)
    outcomes = Counter("clm_planner_migration_outcomes_total",
                       "Finished and failed migrations seen by the planner.", ["reason"],
                       registry=app.metrics.registry)
    app.publishes(RequestMigration, subjects.migration_request("{namespace}"),
                  "Ask the coordinator to live-migrate a pod.")
    app.publishes(NodeDrained, subjects.node_drained("{node}"), "A node the planner drained is empty.")

    terminal = {MigrationReason.MIGRATION_FINISHED, MigrationReason.MIGRATION_FAILED}

    @app.consumer(MIGRATION_EVENT_MODELS.values(), durable="evictor-planner-outcomes",
                  filter_subject=subjects.ALL_MIGRATION_EVENTS, stream=streams.EVENTS,
                  description="Migration events; how migrations ended drives the back-off.")
    async def on_migration_event(event: MigrationEvent) -> None:
        if event.reason not in terminal:
            return
        outcomes.labels(event.kind).inc()
        log.info("migration outcome", extra={"migration": f"{event.namespace}/{event.migration}",
                                             "reason": event.kind})

    return app
