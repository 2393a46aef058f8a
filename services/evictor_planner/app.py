"""The evictor-planner: decides which nodes to empty and moves their pods off.

It reads the cluster through informers (pods, nodes, PDBs, owners, volumes, Migrations)
and runs a cycle (`cycle.py`, pure) every CLM_INTERVAL_SECONDS, sooner when the cluster
changes (after CLM_SETTLE_SECONDS of quiet) or a migration ends. What a cycle decides is
done through the API: a drain cordons the node and marks it with the
`live.cast.ai/draining` annotation (so a new leader continues it and no node is drained
twice at once); pods move by Migration objects (the coordinator runs them) or by the
Eviction API; an emptied node gets CLM_DRAINED_NODE_ACTION and a NodeDrained event. The
plan is published on NATS every cycle (`clm.events.planner.plan`; its last message is the
current plan); with CLM_DRY_RUN only that, and a printed summary, happen.

One replica is active: a lease in the NATS KV bucket `clm-planner-leader`; the others keep
their caches warm and take over within CLM_LEASE_SECONDS when it dies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field

from clm.contracts import (
    MIGRATION_EVENT_MODELS,
    DrainPlanned,
    MigrationReason,
    NodeDrained,
    PlannedDrain,
    PlannedMove,
    RequestMigration,
    protocol,
    streams,
    subjects,
)
from clm.contracts.events import MigrationEvent
from clm.contracts.protocol import Phase, is_terminal
from clm.policy import objects as o
from clm.policy.binpack import PlannerConfig, snapshot_from_objects
from clm.policy.compatibility import Profile, Requirements
from clm.policy.evictor import Mode
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.informer import Caches, Key, Obj, Source, workload_sources
from clm.runtime.kubeapi import api_client
from clm.runtime.leader import NatsLease
from clm.runtime.version import __version__
from services.evictor_planner.cycle import (
    ClusterState,
    Decisions,
    Evict,
    Finish,
    GiveUp,
    Limits,
    Migrate,
    StartDrain,
    decide,
)

log = logging.getLogger(__name__)
STEP_KINDS = {
    "start_drain": StartDrain,
    "migrate": Migrate,
    "evict": Evict,
    "finish": Finish,
    "give_up": GiveUp,
}

SUMMARY = (
    "CLM evictor-planner: bin-packs the cluster and, per the Evictor's label matrix, live-migrates "
    "(Migration objects), evicts or leaves each pod of the nodes it drains; nodes marked for spot "
    "reclaim are emptied first. Publishes its plan every cycle; one active replica (NATS KV lease)."
)

DRAINING = "live.cast.ai/draining"  # on a node: the drain in progress (JSON: id, why, since)
DRAINED = "live.cast.ai/drained"  # on a node: when it was emptied
DRAIN_NODE_LABEL = "live.cast.ai/drain-node"  # on a Migration the planner created


class PlannerSettings(ServiceSettings):
    kubeconfig: Path | None = None
    mode: Mode = Mode.DEFAULT
    # Which nodes pods may live-migrate between (as the coordinator's setting of that name).
    compatibility_profile: Profile = Profile.GENERIC
    dry_run: bool = False
    interval_seconds: float = Field(default=60.0, gt=0)
    settle_seconds: float = Field(default=5.0, ge=0)
    max_migrations_in_flight: int = Field(default=10, ge=1)
    max_nodes_draining: int = Field(default=1, ge=1)
    # What happens to an emptied node: stays cordoned for the autoscaler, or is deleted.
    drained_node_action: Literal["cordon-only", "delete"] = "cordon-only"
    # A node carrying one of these taints, or this annotation, is about to be reclaimed.
    spot_taint_keys: list[str] = ["aws-node-termination-handler/spot-itn", "live.cast.ai/spot-interruption"]
    spot_annotation: str = "live.cast.ai/spot-interruption"
    # Failed migrations within the window that pause new bin-packing drains.
    failure_window_seconds: float = Field(default=600.0, gt=0)
    max_recent_failures: int = Field(default=3, ge=1)
    # A node whose drain was given up is not picked again for this long (doubling each time).
    backoff_seconds: float = Field(default=300.0, gt=0)
    lease_seconds: float = Field(default=15.0, gt=2)
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


def _drain_of(node: Obj) -> dict[str, Any] | None:
    raw = o.annotations(node).get(DRAINING)
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else {"id": raw}
    except orjson.JSONDecodeError:
        return {"id": raw}


def _parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def migration_name(pod: str, pod_uid: str, drain_id: str) -> str:
    """Deterministic per pod and drain: a new leader re-creating it gets a conflict, not a twin."""
    digest = hashlib.sha256(f"{pod_uid}/{drain_id}".encode()).hexdigest()[:8]
    return f"{pod[:52].rstrip('-.')}-{digest}"


class Planner:
    def __init__(self, app: ServiceApp, settings: PlannerSettings) -> None:
        self.app, self.settings = app, settings
        r = app.metrics.registry
        self.cycles = Histogram(
            "clm_planner_cycle_seconds",
            "Planner cycles: snapshot, plan and actions.",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.steps = Counter("clm_planner_steps_total", "Steps taken, by kind.", ["kind"], registry=r)
        self.draining = Gauge("clm_planner_nodes_draining", "Nodes being drained.", registry=r)
        self.leader = Gauge("clm_planner_leader", "1 on the active replica.", registry=r)
        self.outcomes = Counter(
            "clm_planner_migration_outcomes_total",
            "Finished and failed migrations seen by the planner.",
            ["reason"],
            registry=r,
        )
        self.caches: Caches
        self.core: client.CoreV1Api
        self.custom: client.CustomObjectsApi
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="planner-api")
        self.changed = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backoff: dict[str, tuple[float, int]] = {}  # node -> (until, times given up)
        self.evicted: dict[str, int] = {}  # node -> pods evicted in its drain (this replica)
        self.last: Decisions | None = None

    # ----- reading the cluster -----

    def start_informers(self, api: client.ApiClient) -> None:
        self.loop = asyncio.get_running_loop()
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        policy = client.PolicyV1Api(api)
        sources = [
            *workload_sources(api),
            Source("PodDisruptionBudget", policy.list_pod_disruption_budget_for_all_namespaces),
            Source(protocol.KIND, self.custom.list_cluster_custom_object, protocol.CRD),
        ]
        self.caches = Caches(sources, self._on_change).start()

    def _on_change(self, kind: str, key: Key, obj: Obj | None) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.changed.set)

    def state(self) -> tuple[ClusterState, dict[str, Obj], dict[str, dict[str, Any]]]:
        nodes = {o.name(n): n for n in self.caches.objects("Node")}
        pods = [p for p in self.caches.objects("Pod") if o.spec(p).get("nodeName")]
        snapshot = snapshot_from_objects(
            nodes=nodes.values(),
            pods=[p for p in pods if not o.meta(p).get("deletionTimestamp")],
            pdbs=self.caches.objects("PodDisruptionBudget"),
            lookup=self.caches.lookup,
        )
        drains = {name: d for name, n in nodes.items() if (d := _drain_of(n)) is not None}
        reclaimed = frozenset(name for name, n in nodes.items() if self._reclaimed(n))
        busy = {(o.namespace(p), o.name(p)) for p in pods if o.meta(p).get("deletionTimestamp")}
        in_flight = 0
        latest: dict[Key, Obj] = {}
        recent_failures = 0
        now = time.time()
        for m in self.caches.objects(protocol.KIND):
            status, key = m.get("status") or {}, (o.namespace(m), o.spec(m).get("podName", ""))
            if not is_terminal(status.get("phase")):
                in_flight += 1
                busy.add(key)
            elif status.get("phase") == Phase.FAILED:
                done = _parse_time(status.get("completionTime"))
                recent_failures += now - done < self.settings.failure_window_seconds
            created = o.meta(m).get("creationTimestamp", "")
            if key not in latest or created >= o.meta(latest[key]).get("creationTimestamp", ""):
                latest[key] = m
        pod_uids = {(o.namespace(p), o.name(p)): o.meta(p).get("uid") for p in pods}
        failed = frozenset(
            key
            for key, m in latest.items()
            if (m.get("status") or {}).get("phase") == Phase.FAILED
            and (m.get("status") or {}).get("sourcePodUID") == pod_uids.get(key)
        )
        backing_off = frozenset(n for n, (until, _) in self.backoff.items() if until > time.monotonic())
        return (
            ClusterState(
                snapshot=snapshot,
                draining=frozenset(drains),
                reclaimed=reclaimed,
                busy=frozenset(busy),
                failed=failed,
                migrations_in_flight=in_flight,
                backing_off=backing_off,
                paused=recent_failures >= self.settings.max_recent_failures,
            ),
            nodes,
            drains,
        )

    def _reclaimed(self, node: Obj) -> bool:
        if self.settings.spot_annotation in o.annotations(node):
            return True
        return any(t.get("key") in self.settings.spot_taint_keys for t in o.spec(node).get("taints") or [])

    # ----- the cycle -----

    async def cycle(self) -> Decisions:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        state, nodes, drains = await loop.run_in_executor(None, self.state)
        config = PlannerConfig(
            mode=self.settings.mode, requirements=Requirements(profile=self.settings.compatibility_profile)
        )
        limits = Limits(self.settings.max_migrations_in_flight, self.settings.max_nodes_draining)
        decisions = await loop.run_in_executor(None, decide, state, config, limits)
        self.last = decisions
        if self.settings.dry_run:
            self._print(decisions)
        else:
            await self._act(decisions, nodes, drains)
        self.draining.set(len(state.draining))
        seconds = time.perf_counter() - started
        self.cycles.observe(seconds)
        plan = decisions.plan
        log.info(
            "cycle",
            extra={
                "seconds": round(seconds, 3),
                "steps": {k: len(decisions.of(t)) for k, t in STEP_KINDS.items() if decisions.of(t)},
                "draining": sorted(state.draining)[:20],
                "plan_drains": len(plan.drains) if plan else None,
                "plan_rejections": [(r.node, [x.code for x in r.reasons]) for r in plan.rejections[:5]]
                if plan
                else None,
            },
        )
        await self.app.publish(self._plan_event(decisions, state, seconds))
        return decisions

    async def _api(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # The answer is not needed: skipping the client's model classes saves CPU (and trouble
        # with objects the models find incomplete).
        call = lambda: fn(*args, _preload_content=False, **kwargs).data  # noqa: E731 - read it all
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def _act(
        self, decisions: Decisions, nodes: dict[str, Obj], drains: dict[str, dict[str, Any]]
    ) -> None:
        for step in decisions.steps:
            try:
                if isinstance(step, StartDrain):
                    drains[step.node] = await self._start_drain(step)
                elif isinstance(step, Migrate):
                    await self._migrate(step, drains.get(step.node, {}).get("id", "none"))
                elif isinstance(step, Evict):
                    await self._evict(step)
                elif isinstance(step, Finish):
                    await self._finish(step.node)
                elif isinstance(step, GiveUp):
                    await self._give_up(step)
                self.steps.labels(type(step).__name__).inc()
            except ApiException as exc:
                log.warning(
                    "step failed",
                    extra={"step": repr(step)[:300], "status": exc.status, "error": str(exc.reason)[:200]},
                )

    async def _start_drain(self, step: StartDrain) -> dict[str, Any]:
        drain = {
            "id": f"{int(time.time())}-{os.urandom(3).hex()}",
            "why": step.why,
            "since": datetime.now(UTC).isoformat(),
        }
        patch = {
            "spec": {"unschedulable": True},
            "metadata": {"annotations": {DRAINING: orjson.dumps(drain).decode(), DRAINED: None}},
        }
        await self._api(self.core.patch_node, step.node, patch)
        self.evicted[step.node] = 0
        log.info("drain started", extra={"node": step.node, "why": step.why})
        return drain

    async def _migrate(self, step: Migrate, drain_id: str) -> None:
        pod = self.caches.lookup("Pod", step.namespace, step.pod)
        if pod is None:
            return
        spec: dict[str, Any] = {"podName": step.pod, "sourceNode": step.node, "fallback": str(step.fallback)}
        if step.destination:
            spec["destinationNode"] = step.destination
        body = {
            "apiVersion": protocol.API_VERSION,
            "kind": protocol.KIND,
            "metadata": {
                "name": migration_name(step.pod, o.meta(pod).get("uid", ""), drain_id),
                "labels": {DRAIN_NODE_LABEL: step.node},
            },
            "spec": spec,
        }
        try:
            await self._api(
                self.custom.create_namespaced_custom_object,
                protocol.GROUP,
                protocol.VERSION,
                step.namespace,
                protocol.PLURAL,
                body,
            )
        except ApiException as exc:
            if exc.status != 409:  # 409: created before (by this or an earlier leader)
                raise

    async def _evict(self, step: Evict) -> None:
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=step.pod, namespace=step.namespace))
        try:
            await self._api(self.core.create_namespaced_pod_eviction, step.pod, step.namespace, body)
            self.evicted[step.node] = self.evicted.get(step.node, 0) + 1
        except ApiException as exc:
            if exc.status == 429:  # a PodDisruptionBudget says not now: the next cycle tries again
                log.info("eviction refused for now", extra={"pod": f"{step.namespace}/{step.pod}"})
            elif exc.status != 404:
                raise

    async def _finish(self, node: str) -> None:
        migrated = sum(
            1
            for m in self.caches.objects(protocol.KIND)
            if o.labels(m).get(DRAIN_NODE_LABEL) == node
            and (m.get("status") or {}).get("phase") == Phase.FINISHED
        )
        action = self.settings.drained_node_action
        if action == "delete":
            await self._api(self.core.delete_node, node)
        else:
            patch = {"metadata": {"annotations": {DRAINING: None, DRAINED: datetime.now(UTC).isoformat()}}}
            await self._api(self.core.patch_node, node, patch)
        await self.app.publish(
            NodeDrained(
                node=node,
                pods_migrated=migrated,
                pods_evicted=self.evicted.pop(node, 0),
                action="delete-requested" if action == "delete" else "cordon-only",
            )
        )
        self.backoff.pop(node, None)
        log.info("node drained", extra={"node": node, "action": action, "migrated": migrated})

    async def _give_up(self, step: GiveUp) -> None:
        until, times = self.backoff.get(step.node, (0.0, 0))
        delay = min(self.settings.backoff_seconds * 2**times, 24 * 3600)
        self.backoff[step.node] = (time.monotonic() + delay, times + 1)
        patch = {"spec": {"unschedulable": None}, "metadata": {"annotations": {DRAINING: None}}}
        await self._api(self.core.patch_node, step.node, patch)
        self.evicted.pop(step.node, None)
        log.warning("drain given up", extra={"node": step.node, "why": step.why, "retry_after_s": delay})

    # ----- reporting -----

    def _print(self, decisions: Decisions) -> None:
        for step in decisions.steps:
            if isinstance(step, StartDrain):
                moves = [s for s in decisions.steps if isinstance(s, Migrate | Evict) and s.node == step.node]
                migrate = sum(isinstance(s, Migrate) for s in moves)
                print(
                    f"[dry-run] drain {step.node} ({step.why}, saves {step.saving:.3f}/h): "
                    f"{migrate} live-migrate, {len(moves) - migrate} evict",
                    flush=True,
                )
            elif not isinstance(step, Migrate | Evict):
                print(f"[dry-run] {step!r}", flush=True)

    def _plan_event(self, decisions: Decisions, state: ClusterState, seconds: float) -> DrainPlanned:
        started: dict[str, StartDrain] = {s.node: s for s in decisions.steps if isinstance(s, StartDrain)}
        drains: list[PlannedDrain] = []
        for node in list(started)[:100]:
            moves = [
                PlannedMove(
                    namespace=s.namespace,
                    pod=s.pod,
                    action="evict" if isinstance(s, Evict) else "live-migrate",
                    destination=getattr(s, "destination", None),
                    why=s.why[:300],
                )
                for s in decisions.steps
                if isinstance(s, Migrate | Evict) and s.node == node
            ]
            drains.append(
                PlannedDrain(
                    node=node, why=started[node].why, saving_per_hour=started[node].saving, moves=moves[:200]
                )
            )
        plan = decisions.plan
        return DrainPlanned(
            mode=str(self.settings.mode),
            dry_run=self.settings.dry_run,
            nodes=len(state.snapshot.nodes),
            pods=len(state.snapshot.pods),
            nodes_draining=sorted(state.draining)[:500],
            nodes_reclaimed=sorted(state.reclaimed)[:500],
            new_drains=drains,
            nodes_the_plan_would_drain=len(plan.drains) if plan else 0,
            migrations_in_flight=state.migrations_in_flight,
            migrations_deferred=decisions.deferred_migrations,
            paused=state.paused,
            cycle_seconds=round(seconds, 3),
        )

    # ----- running -----

    async def run_forever(self, lease: NatsLease) -> None:
        while not self.caches.synced():
            await asyncio.sleep(0.1)
        next_cycle = 0.0
        while True:
            try:
                leading = await lease.renew()
            except Exception as exc:  # - NATS away: not leading until it answers
                log.warning("lease check failed", extra={"error": str(exc)[:200]})
                leading = False
            self.leader.set(1 if leading else 0)
            if leading and time.monotonic() >= next_cycle:
                self.changed.clear()
                try:
                    await self.cycle()
                except Exception:
                    log.exception("planner cycle failed")
                next_cycle = time.monotonic() + self.settings.interval_seconds
            wait = min(self.settings.lease_seconds / 3, max(next_cycle - time.monotonic(), 0.05))
            try:
                await asyncio.wait_for(self.changed.wait(), wait)
                # The cluster changed: plan again once it has been quiet for a moment.
                await asyncio.sleep(self.settings.settle_seconds)
                next_cycle = min(next_cycle, time.monotonic())
            except TimeoutError:
                pass


def build(settings: PlannerSettings) -> ServiceApp:
    app = ServiceApp(name="evictor-planner", version=__version__, settings=settings, description=SUMMARY)
    planner = Planner(app, settings)
    app.publishes(
        RequestMigration,
        subjects.migration_request("{namespace}"),
        "Ask the coordinator to live-migrate a pod.",
    )
    app.publishes(NodeDrained, subjects.node_drained("{node}"), "A node the planner drained is empty.")
    app.publishes(
        DrainPlanned, subjects.PLANNER_PLAN, "The plan of every cycle (its last message is the current plan)."
    )

    @app.on_start
    async def start_planning() -> None:
        planner.start_informers(api_client(settings.kubeconfig, "evictor-planner", connections=8))
        lease = NatsLease(app.js, "clm-planner-leader", settings.replica_id, settings.lease_seconds)
        app.background(planner.run_forever(lease))

    terminal = {MigrationReason.MIGRATION_FINISHED, MigrationReason.MIGRATION_FAILED}

    @app.consumer(
        MIGRATION_EVENT_MODELS.values(),
        durable="evictor-planner-outcomes",
        filter_subject=subjects.ALL_MIGRATION_EVENTS,
        stream=streams.EVENTS,
        description="Migration events: a migration that ends prompts the next cycle.",
    )
    async def on_migration_event(event: MigrationEvent) -> None:
        if event.reason not in terminal:
            return
        planner.outcomes.labels(event.kind).inc()
        planner.changed.set()

    return app
