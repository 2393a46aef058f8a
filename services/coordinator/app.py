"""The coordinator's wiring: Migration objects in, agent commands and events out.

A resync loop lists the Migrations (level-based; a watch only makes it react sooner) and
runs each one that is not finished, once per replica at a time, holding a lease on the
object so two replicas never drive the same migration; a crashed replica's lease expires
and another (or the restarted one) resumes from the status. Pending migrations wait for a
slot under the concurrency limits, with the reason in their status. RequestMigration
commands on NATS become Migration objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client import Counter, Gauge
from pydantic import Field

from clm.contracts import (
    MIGRATION_EVENT_MODELS,
    CheckpointCommand,
    ContractError,
    NetworkCommand,
    RequestMigration,
    StepProgress,
    decode,
    protocol,
    streams,
    subjects,
)
from clm.contracts.protocol import Phase, is_terminal
from clm.policy.compatibility import Profile, Requirements
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.agent_client import AgentClient
from clm.runtime.informer import Informer, Key, Obj, Source
from clm.runtime.kubeapi import api_client
from clm.runtime.version import __version__
from services.coordinator.admission import Limits, admit
from services.coordinator.kube import FINALIZER, Conflict, KubeGateway, lease_holder
from services.coordinator.lease import LostMigration, MigrationHandle, keep_lease
from services.coordinator.move_metrics import OUTCOMES, MoveMetrics
from services.coordinator.runner import MigrationRunner, RunnerConfig

log = logging.getLogger(__name__)

SUMMARY = (
    "CLM migration coordinator: owns every Migration (live.cast.ai/v1) from request to "
    "completion — prepares the destination network, checks the CPU, creates the clone pod, "
    "drives the checkpoint agents' dump and restore, commits the IP handover, finalizes, and on "
    "failure rolls back and applies the fallback (evict / restore on source / none). Publishes "
    "the eight migration events on NATS and records them as Kubernetes Events on the Migration. "
    "Accepts RequestMigration commands on NATS."
)


class CoordinatorSettings(ServiceSettings):
    # Path of a kubeconfig; unset: in-cluster configuration (the pod's service account).
    kubeconfig: Path | None = None
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Migrations are watched (a change wakes the coordinator at once); a full pass also runs
    # this often, to catch up on anything a broken watch missed and on expired leases.
    resync_seconds: float = Field(default=10.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=1)
    step_timeout_seconds: float = Field(default=300.0, gt=0)
    max_per_source_node: int = Field(default=2, ge=1)
    max_per_destination_node: int = Field(default=2, ge=1)
    max_in_cluster: int = Field(default=20, ge=1)
    # Migrations this replica drives at once; the rest are left to the other replicas (or to
    # this one's next pass), so a burst is spread over every replica, not taken by the first.
    max_per_replica: int = Field(default=5, ge=1)
    # Rules for nodes a pod may move between when the coordinator picks the destination.
    compatibility_profile: Profile = Profile.GENERIC
    # Whether `auto` may pick post-copy (its commit point is the destination's resume, so a
    # cluster opts in), and from which pod memory: where it shortens the freeze in
    # `tools/bench migrate` (256 MiB: on par with stop-and-copy; 1 GiB: 1.45 s against 5.4 s).
    post_copy_auto: bool = False
    post_copy_auto_min_mib: int = Field(default=512, ge=0)


def post_copy_threshold(settings: CoordinatorSettings) -> int | None:
    """From which pod memory `auto` picks post-copy, in bytes; None: it never does."""
    return settings.post_copy_auto_min_mib << 20 if settings.post_copy_auto else None


class Coordinator:
    def __init__(self, app: ServiceApp, settings: CoordinatorSettings) -> None:
        self.app, self.settings = app, settings
        # Connected at start, so --asyncapi and --check-config need no API.
        self.kube: KubeGateway
        r = app.metrics.registry
        self.outcomes = Counter(
            "clm_coordinator_migrations_total", "Migrations ended, by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome=outcome)  # from 0: `increase()` then counts the first
        self.in_flight = Gauge(
            "clm_coordinator_migrations_running", "Migrations this replica is driving.", registry=r
        )
        self.evictions_refused = Counter(
            "clm_coordinator_evictions_refused_total",
            "Fallback evictions a PodDisruptionBudget refused (429); each is retried with back-off.",
            registry=r,
        )
        self.lost = Counter(
            "clm_coordinator_runs_stopped_total",
            "Runs this replica stopped because it could not keep the migration's lease.",
            registry=r,
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        # The runs this replica drives, by migration uid: where the agents' progress goes.
        self.runners: dict[str, MigrationRunner] = {}
        self.moves = MoveMetrics(
            r, running=lambda: {f"{m.namespace}/{m.name}": m.status for m in list(self.runners.values())}
        )
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.watch: Informer | None = None
        self.runner_config = RunnerConfig(
            replica=settings.replica_id,
            step_timeout=settings.step_timeout_seconds,
            requirements=Requirements(profile=settings.compatibility_profile),
            post_copy_auto_min_bytes=post_copy_threshold(settings),
        )
        self.limits = Limits(
            settings.max_per_source_node, settings.max_per_destination_node, settings.max_in_cluster
        )

    async def drive(self, uid: str, migration: dict[str, Any]) -> None:
        try:
            migration = await asyncio.to_thread(
                self.kube.take_lease, migration, self.settings.replica_id, self.settings.lease_seconds
            )
        except Conflict:
            self.running.pop(uid, None)
            return
        handle = MigrationHandle(migration, kube=self.kube, replica=self.settings.replica_id)
        runner = MigrationRunner(
            migration,
            kube=self.kube,
            send=AgentClient(self.app.nc).send,
            capabilities=self.app.node_capabilities,
            publish=self.app.publish,
            config=self.runner_config,
            handle=handle,
        )
        self.runners[uid] = runner
        run = asyncio.create_task(runner.run())
        keeper = asyncio.create_task(keep_lease(handle, run, seconds=self.settings.lease_seconds))
        self.in_flight.inc()
        started = time.monotonic()
        try:
            outcome = await run
            self.outcomes.labels(outcome=outcome.lower()).inc()
            self.moves.ended(outcome, runner.status, time.monotonic() - started)
            keeper.cancel()
            # It has ended: no lease is left behind on it.
            await handle.release()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                run.cancel()
                raise  # the service is stopping
            # The lease could not be kept: another replica resumes from the status.
            self.lost.inc()
            log.warning("migration run stopped: its lease could not be kept", extra={"migration": uid})
        except LostMigration as exc:
            self.lost.inc()
            log.warning(
                "migration run stopped: another replica drives it",
                extra={"migration": uid, "error": str(exc)},
            )
        except Exception:  # - logged; the next resync resumes from the status
            log.exception("migration run interrupted", extra={"migration": uid})
        finally:
            self.in_flight.dec()
            keeper.cancel()
            self.running.pop(uid, None)
            self.runners.pop(uid, None)

    async def on_progress(self, data: bytes) -> None:
        """An agent's StepProgress: to the run it belongs to, if this replica drives it."""
        try:
            heard = decode(data, StepProgress)
        except ContractError as exc:
            log.debug("progress message ignored: %s", exc)
            return
        runner = self.runners.get(heard.migration_uid)
        if runner is not None:
            # A lost lease: the run itself finds out and stops.
            with contextlib.suppress(LostMigration):
                await runner.on_progress(heard)

    async def resync(self) -> None:
        items = await asyncio.to_thread(self.kube.list_migrations)
        admitted, waiting = admit(items, self.limits)
        for migration, why in waiting:
            status = migration.get("status") or {}
            if status.get("phase") != Phase.PENDING or status.get("message") != why:
                try:
                    await asyncio.to_thread(
                        self.kube.patch_status, migration, {"phase": str(Phase.PENDING), "message": why}
                    )
                except Exception as exc:  # - the next resync tries again
                    log.warning("could not mark a migration pending", extra={"error": str(exc)})
        now = time.time()
        await self._release_ended(items, now)
        for migration in admitted:
            uid = migration["metadata"]["uid"]
            if uid in self.running or is_terminal((migration.get("status") or {}).get("phase")):
                continue
            if lease_holder(migration, at=now) not in (None, self.settings.replica_id):
                continue  # another replica drives it: leave this replica's slots to the rest
            if len(self.running) >= self.settings.max_per_replica:
                break  # another replica takes it, or this one once a slot frees (the watch wakes it)
            self.running[uid] = asyncio.create_task(self.drive(uid, migration))

    async def _release_ended(self, items: list[Obj], now: float) -> None:
        """An ended Migration whose driver died before letting it go still holds the
        finalizer: a deletion would wait for ever. Let it go."""
        for migration in items:
            uid = migration["metadata"]["uid"]
            if (
                is_terminal((migration.get("status") or {}).get("phase"))
                and FINALIZER in (migration["metadata"].get("finalizers") or [])
                and uid not in self.running
                and lease_holder(migration, at=now) in (None, self.settings.replica_id)
            ):
                try:
                    await asyncio.to_thread(self.kube.release_lease, migration)
                except Exception as exc:  # - a conflict or the API away: the next pass tries again
                    log.warning("could not release an ended migration", extra={"error": str(exc)})

    def start_watch(self, api: client.ApiClient) -> None:
        """Watch Migrations (list + watch, resumed after disconnects): any change — a new
        Migration, a runner's status patch, a lease released — wakes the next pass."""
        self.loop = asyncio.get_running_loop()
        custom = client.CustomObjectsApi(api)
        source = Source(protocol.KIND, custom.list_cluster_custom_object, protocol.CRD)
        self.watch = Informer(source, self._changed).start()

    def _changed(self, _kind: str, _key: Key, obj: Obj | None) -> None:
        assert self.loop is not None
        if obj is not None and obj["metadata"].get("deletionTimestamp"):
            self.loop.call_soon_threadsafe(self._deleting, obj["metadata"].get("uid", ""))
        self.loop.call_soon_threadsafe(self.wake.set)

    def _deleting(self, uid: str) -> None:
        """A Migration this replica drives is being deleted: its runner cancels at the next
        step before the commit point (after it, the deletion waits for the finish)."""
        runner = self.runners.get(uid)
        if runner is not None:
            runner.cancel()

    async def resync_forever(self) -> None:
        while True:
            self.wake.clear()
            try:
                await self.resync()
            except Exception as exc:  # - the API may be briefly away
                log.warning("resync failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.settings.resync_seconds)
            await asyncio.sleep(0.05)  # a burst of changes (a planner's batch) makes one pass

    async def on_request(self, request: RequestMigration) -> None:
        name = f"{request.pod}-{request.message_id[:8].lower()}"[:253]
        body: dict[str, Any] = {
            "apiVersion": protocol.API_VERSION,
            "kind": protocol.KIND,
            "metadata": {
                "name": name,
                "namespace": request.namespace,
                "labels": {"live.cast.ai/requested-by": request.requested_by[:63]},
            },
            "spec": {"podName": request.pod, "strategy": str(request.strategy)},
        }
        if request.destination_node:
            body["spec"]["destinationNode"] = request.destination_node
        try:
            await asyncio.to_thread(self.kube.create_migration, request.namespace, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:  # 409: this request was turned into a Migration already
                raise
        log.info("migration requested", extra={"namespace": request.namespace, "migration": name})


def build(settings: CoordinatorSettings) -> ServiceApp:
    app = ServiceApp(name="coordinator", version=__version__, settings=settings, description=SUMMARY)
    app.publishes(
        CheckpointCommand,
        subjects.checkpoint_command("{node}", "{step}"),
        "Checkpoint steps for the node agents; answered by StepResults on clm.events.step.>.",
    )
    app.publishes(
        NetworkCommand,
        subjects.network_command("{node}", "{step}"),
        "Network steps for the IP-handover agents; answered by StepResults on clm.events.step.>.",
    )
    for reason, model in MIGRATION_EVENT_MODELS.items():
        app.publishes(
            model,
            subjects.migration_event("{namespace}", "{migration}", reason.value),
            f"Migration event {reason.value}, also recorded as a Kubernetes Event.",
        )
    coordinator = Coordinator(app, settings)

    @app.on_start
    async def start_resync() -> None:
        api = api_client(settings.kubeconfig, "coordinator")
        coordinator.kube = KubeGateway(api, on_eviction_refused=coordinator.evictions_refused.inc)
        coordinator.start_watch(api)
        app.background(coordinator.resync_forever())

        async def on_progress(msg: Any) -> None:
            await coordinator.on_progress(msg.data)

        # Plain NATS: progress is not stored, and each replica hears all of it (it keeps
        # what is about the runs it drives).
        await app.nc.subscribe(subjects.ALL_MIGRATION_PROGRESS, cb=on_progress)

    @app.on_stop
    async def stop_watching() -> None:
        if coordinator.watch is not None:
            coordinator.watch.stop()

    @app.consumer(
        RequestMigration,
        durable="coordinator-requests",
        filter_subject=subjects.ALL_MIGRATION_REQUESTS,
        stream=streams.COMMANDS,
        description="Live-migration requests from users and tools: each becomes a Migration.",
    )
    async def on_request(request: RequestMigration) -> None:
        await coordinator.on_request(request)

    return app
