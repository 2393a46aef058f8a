"""The labeler: keeps `live.cast.ai/migration-enabled=true` exactly on the eligible pods and
on the nodes whose checkpoint agent works.

Pods: the cluster is read through informers (list + watch, local caches) of pods and of
what eligibility depends on (owners, PVCs, PVs, nodes). A changed pod is assessed again; a
changed owner or claim marks its namespace's pods, a changed volume or node every pod.
Only what differs is patched (`labels.py`), so a watch reconnect or a restart relabels
nothing that is right. When a pod's label flips, a PodEligibilityChanged event says why.
Replicas share pods by a hash of their UID: by default each replica finds the others in
the NATS KV bucket `clm-labeler-members` and takes its share of the live replicas, so
`kubectl scale` needs nothing else; CLM_SHARDS (with CLM_SHARD) fixes the split instead.

Nodes (the replica with share 0 only): labeled while their checkpoint agent's latest NodeCapabilities says
the probe works and is younger than CLM_NODE_CAPABILITIES_TTL_SECONDS (agents repeat it);
unlabeled when the probe breaks or the agent goes quiet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client import Counter, Gauge
from pydantic import Field

from clm.contracts import EligibilityReason, NodeCapabilities, PodEligibilityChanged, streams, subjects
from clm.policy import objects as o
from clm.runtime import ServiceApp, ServiceSettings
from clm.runtime.informer import NAMESPACED, Caches, Informer, Key, Obj, workload_sources
from clm.runtime.kubeapi import api_client
from clm.runtime.membership import NatsMembership, member_key
from clm.runtime.version import __version__
from services.labeler.labels import PodVerdict, node_patch, owns, pod_patch, pod_verdict

log = logging.getLogger(__name__)

MEMBERS_BUCKET = "clm-labeler-members"

SUMMARY = (
    "CLM labeler: watches pods and what their eligibility depends on (owners, PVCs, PVs, nodes) and "
    "keeps live.cast.ai/migration-enabled=true exactly on the eligible pods (why a pod is not "
    "eligible: the live.cast.ai/ineligible-reasons annotation and a PodEligibilityChanged event); "
    "labels nodes whose checkpoint agent reports a working probe, and unlabels them when it breaks "
    "or goes quiet."
)


class LabelerSettings(ServiceSettings):
    kubeconfig: Path | None = None
    # A fixed split (replica CLM_SHARD of CLM_SHARDS); unset, replicas find each other in NATS.
    shard: int = Field(default=0, ge=0)
    shards: int | None = Field(default=None, ge=1)
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # How often a replica says it is alive; it drops out of the split after 3 silent periods.
    membership_seconds: float = Field(default=2.0, gt=0)
    node_capabilities_ttl_seconds: float = Field(default=120.0, gt=0)
    # How often node labels are checked against the agents' reports.
    node_check_seconds: float = Field(default=5.0, gt=0)
    # Patches in flight at once (the API server's patience sets the upper bound).
    api_concurrency: int = Field(default=16, ge=1, le=256)
    # A pod whose patch failed is assessed and patched again after this long.
    retry_seconds: float = Field(default=2.0, gt=0)


class Labeler:
    def __init__(self, app: ServiceApp, settings: LabelerSettings) -> None:
        self.app, self.settings = app, settings
        r = app.metrics.registry
        self.patched = Counter(
            "clm_labeler_patches_total",
            "Label patches written, by kind and label value.",
            ["kind", "value"],
            registry=r,
        )
        self.eligible = Gauge("clm_labeler_pods_eligible", "Pods this replica finds eligible.", registry=r)
        self.assessed = Counter(
            "clm_labeler_pods_assessed", "Pod assessments made (this replica's pods).", registry=r
        )
        self.passes = Counter(
            "clm_labeler_passes_total",
            "Assessment passes finished, every patch of the pass written (or queued to retry).",
            registry=r,
        )
        self.synced = Gauge(
            "clm_labeler_caches_synced", "1 once every cache has been filled by its first list.", registry=r
        )
        self.capable = Gauge(
            "clm_labeler_node_capable",
            "1 when the node's checkpoint agent reports a working probe, else 0.",
            ["node"],
            registry=r,
        )
        self.informers: dict[str, Informer] = {}
        self.caches: Caches
        self.dirty: set[Key] = set()
        # Indexes so a changed owner or node marks only the pods it can affect.
        self.pods_by_namespace: dict[str, set[Key]] = {}
        self.pods_by_node: dict[str, set[Key]] = {}
        self.pod_node: dict[Key, str] = {}
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reports: dict[str, tuple[bool, float]] = {}  # node -> (probe ok, when the agent sent it)
        self.eligible_pods: set[Key] = set()
        self.started = time.monotonic()
        self.core: client.CoreV1Api
        self.pool = ThreadPoolExecutor(settings.api_concurrency, thread_name_prefix="labeler-api")
        # (index, count) of the replicas sharing the pods; None until the first membership read.
        self.share: tuple[int, int] | None = (
            (settings.shard, settings.shards) if settings.shards is not None else None
        )
        self.share_gauge = Gauge(
            "clm_labeler_share",
            "This replica's share of the pods: its index and the replica count.",
            ["of"],
            registry=r,
        )
        if self.share is not None:
            self._show_share()

    # ----- caches -----

    def _changed(self, kind: str, key: Key, obj: Obj | None) -> None:
        """From informer threads: mark the pods to assess again."""
        assert self.loop is not None
        node = o.spec(obj).get("nodeName", "") if kind == "Pod" and obj is not None else None
        self.loop.call_soon_threadsafe(
            functools.partial(self._mark, kind, key, deleted=obj is None, node=node)
        )

    def _mark(self, kind: str, key: Key, *, deleted: bool, node: str | None) -> None:
        if kind == "Pod":
            self._index(key, deleted=deleted, node=node or "")
            self.dirty.add(key)
        elif kind in NAMESPACED:
            self.dirty.update(self.pods_by_namespace.get(key[0], ()))
        elif kind == "Node":
            self.dirty.update(self.pods_by_node.get(key[1], ()))
        else:  # a PersistentVolume: rare, and claims in any namespace may bind it
            self.dirty.update(self.pod_node)
        self.wake.set()

    def _retry(self, key: Key) -> None:
        self.dirty.add(key)
        self.wake.set()

    def _index(self, key: Key, *, deleted: bool, node: str) -> None:
        old = self.pod_node.pop(key, None)
        if old is not None:
            self.pods_by_node.get(old, set()).discard(key)
        if deleted:
            self.pods_by_namespace.get(key[0], set()).discard(key)
            return
        self.pod_node[key] = node
        self.pods_by_node.setdefault(node, set()).add(key)
        self.pods_by_namespace.setdefault(key[0], set()).add(key)

    def start_informers(self, api: client.ApiClient) -> None:
        self.loop = asyncio.get_running_loop()
        self.core = client.CoreV1Api(api)
        self.caches = Caches(workload_sources(api), self._changed).start()
        self.informers = self.caches.informers

    # ----- pods -----

    async def label_pods_forever(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.caches.synced() or self.share is None:
                await asyncio.sleep(0.1)  # assess against complete caches, with a known share
                self.wake.set()
                continue
            self.synced.set(1)
            batch, self.dirty = self.dirty, set()
            writes: list[tuple[Key, dict[str, Any], PodVerdict]] = []
            for i, key in enumerate(batch):
                planned = self._plan(key)
                if planned is not None:
                    writes.append((key, *planned))
                if i % 2000 == 1999:
                    await asyncio.sleep(0)  # stay responsive (health, NATS) through a big batch
            self.eligible.set(len(self.eligible_pods))
            pending = iter(writes)

            async def writer(pending: Iterator[tuple[Key, dict[str, Any], PodVerdict]]) -> None:
                for key, patch, verdict in pending:
                    try:
                        await self._write(key, patch, verdict)
                    except Exception as exc:  # - tried again shortly
                        log.warning("labeling failed", extra={"pod": "/".join(key), "error": str(exc)[:300]})
                        asyncio.get_running_loop().call_later(self.settings.retry_seconds, self._retry, key)

            await asyncio.gather(*(writer(pending) for _ in range(self.settings.api_concurrency)))
            self.passes.inc()

    def _plan(self, key: Key) -> tuple[dict[str, Any], PodVerdict] | None:
        """The patch this pod needs (pure, from the caches), or None."""
        pod = self.informers["Pod"].get(*key)
        if pod is None:
            self.eligible_pods.discard(key)
            return None
        assert self.share is not None
        if not owns(o.meta(pod).get("uid", ""), *self.share):
            self.eligible_pods.discard(key)
            return None
        if o.status(pod).get("phase") in ("Succeeded", "Failed") or o.meta(pod).get("deletionTimestamp"):
            return None
        verdict = pod_verdict(pod, self.caches.lookup)
        self.assessed.inc()
        (self.eligible_pods.add if verdict.eligible else self.eligible_pods.discard)(key)
        patch = pod_patch(pod, verdict)
        return None if patch is None else (patch, verdict)

    # The answers are not needed: the client's model classes would cost more than the request.
    def _patch_pod(self, key: Key, patch: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod(key[1], key[0], patch, _preload_content=False).data  # noqa: B018 - read it all

    def _patch_node(self, name: str, patch: dict[str, Any]) -> None:
        self.core.patch_node(name, patch, _preload_content=False).data  # noqa: B018 - read it all

    async def _write(self, key: Key, patch: dict[str, Any], verdict: PodVerdict) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self._patch_pod, key, patch)
        self.patched.labels(kind="pod", value=str(verdict.eligible).lower()).inc()
        # The label or the reasons changed: say so (a restart finds them right and says nothing).
        await self.app.publish(
            PodEligibilityChanged(
                namespace=key[0],
                pod=key[1],
                eligible=verdict.eligible,
                reasons=[EligibilityReason(code=c, message=m[:1000]) for c, m in verdict.reasons],
            )
        )

    # ----- sharing the pods -----

    def _show_share(self) -> None:
        assert self.share is not None
        self.share_gauge.labels("index").set(self.share[0])
        self.share_gauge.labels("count").set(self.share[1])

    def reshare(self, share: tuple[int, int]) -> None:
        """A new split: every pod is assessed again (a pod may have become this replica's)."""
        if share == self.share:
            return
        log.info("share of the pods changed", extra={"previous": str(self.share), "share": str(share)})
        self.share = share
        self._show_share()
        self.dirty.update(self.pod_node)
        self.wake.set()

    async def follow_membership(self, membership: NatsMembership) -> None:
        while True:
            try:
                self.reshare(await membership.beat())
            except Exception as exc:  # - NATS away: keep the last split, try again
                log.warning("membership update failed", extra={"error": str(exc)[:300]})
            await asyncio.sleep(self.settings.membership_seconds)

    # ----- nodes -----

    def report(self, caps: NodeCapabilities) -> None:
        # Its own time, not when it reached us: a replayed old report must not look fresh.
        sent = caps.occurred_at.timestamp()
        if sent >= self.reports.get(caps.node, (False, 0.0))[1]:
            self.reports[caps.node] = (caps.probe_ok, sent)
            self.capable.labels(caps.node).set(1 if caps.probe_ok else 0)

    def node_capable(self, name: str) -> bool | None:
        """None: not known yet. Right after a (re)start the agents' next reports are still on
        their way; until one TTL has passed, a node without a report keeps its label."""
        if name not in self.reports:
            if time.monotonic() - self.started < self.settings.node_capabilities_ttl_seconds:
                return None
            return False
        ok, sent = self.reports[name]
        return ok and time.time() - sent < self.settings.node_capabilities_ttl_seconds

    async def label_nodes_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_check_seconds)
            if self.share is None or self.share[0] != 0:
                continue  # one replica labels the nodes
            nodes = self.informers.get("Node")
            if nodes is None or not nodes.synced.is_set():
                continue
            for (_, name), node in list(nodes.objects.items()):
                capable = self.node_capable(name)
                patch = None if capable is None else node_patch(node, capable=capable)
                if patch is None:
                    continue
                try:
                    await asyncio.get_running_loop().run_in_executor(self.pool, self._patch_node, name, patch)
                    self.patched.labels(kind="node", value=str(capable).lower()).inc()
                except Exception as exc:  # - the next round tries again
                    log.warning("node labeling failed", extra={"node": name, "error": str(exc)[:300]})


def build(settings: LabelerSettings) -> ServiceApp:
    app = ServiceApp(name="labeler", version=__version__, settings=settings, description=SUMMARY)
    labeler = Labeler(app, settings)
    app.publishes(
        PodEligibilityChanged,
        subjects.pod_eligibility("{namespace}", "{pod}"),
        "A pod became eligible or stopped being eligible, with the reasons.",
    )

    @app.on_start
    async def start_watching() -> None:
        labeler.start_informers(
            api_client(settings.kubeconfig, "labeler", connections=settings.api_concurrency)
        )
        app.background(labeler.label_pods_forever())
        app.background(labeler.label_nodes_forever())
        if settings.shards is None:
            membership = NatsMembership(
                app.js, MEMBERS_BUCKET, settings.replica_id, ttl=3 * settings.membership_seconds
            )
            app.background(labeler.follow_membership(membership))
            app.on_stop(membership.leave)

    # Every replica keeps the agents' reports: whichever has share 0 labels the nodes. With
    # replicas coming and going (dynamic split), each has its own consumer, removed by NATS
    # once its replica is gone for an hour.
    dynamic = settings.shards is None

    @app.consumer(
        NodeCapabilities,
        durable=subjects.durable(
            "labeler-node-capabilities", member_key(settings.replica_id) if dynamic else str(settings.shard)
        ),
        inactive_threshold_seconds=3600.0 if dynamic else None,
        title="labeler-node-capabilities",
        filter_subject=subjects.ALL_NODE_CAPABILITIES,
        stream=streams.EVENTS,
        description="What each node's checkpoint agent can do (repeated while it runs).",
    )
    async def on_capabilities(caps: NodeCapabilities) -> None:
        labeler.report(caps)

    return app
