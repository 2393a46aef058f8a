"""The coordinator's view of the Kubernetes API, through the official client.

Thin and synchronous (the client is); the coordinator calls it from worker threads. Every
write is idempotent where the step needs it: an object that already exists (409) or is
already gone (404) counts as done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts.protocol import API_VERSION, CRD, GROUP, KIND, PLURAL, VERSION

LEASE_HOLDER = "live.cast.ai/coordinator"
LEASE_UNTIL = "live.cast.ai/coordinator-lease-until"
# Held while a replica drives the move: a deletion then waits for the run to end it (a
# cancel before the commit point, the finish after it) instead of orphaning the pod's state.
FINALIZER = "live.cast.ai/migration"


def finalizers_with(migration: dict[str, Any], *, ours: bool) -> list[str] | None:
    """The Migration's finalizers with or without ours; None: no change. A list is replaced
    whole by a merge patch: the others are kept, and the resourceVersion guards the rest. None
    is added to an object being deleted (the API refuses new finalizers then)."""
    meta = migration["metadata"]
    current = list(meta.get("finalizers") or [])
    if ours and FINALIZER not in current and not meta.get("deletionTimestamp"):
        return [*current, FINALIZER]
    if not ours and FINALIZER in current:
        return [f for f in current if f != FINALIZER]
    return None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conflict(Exception):
    """Someone else changed the object first (optimistic concurrency)."""


def lease_holder(migration: dict[str, Any], *, at: float) -> str | None:
    """The replica whose lease on the migration is still valid at `at`, if any."""
    annotations = (migration.get("metadata") or {}).get("annotations") or {}
    holder, until = annotations.get(LEASE_HOLDER), float(annotations.get(LEASE_UNTIL, "0") or 0)
    return holder if holder and until > at else None


class KubeGateway:
    def __init__(
        self, api: client.ApiClient, *, on_eviction_refused: Callable[[], None] | None = None
    ) -> None:
        self.api = api
        # Told of each eviction a PodDisruptionBudget refused (429), for the metric.
        self.on_eviction_refused = on_eviction_refused or (lambda: None)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # ----- migrations -----

    def list_migrations(self) -> list[dict[str, Any]]:
        return self.custom.list_cluster_custom_object(*CRD)["items"]

    def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_migration(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def patch_status(self, migration: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write the status only if the object is still the one read (its resourceVersion):
        Conflict when anyone wrote it in between."""
        meta = migration["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("changed by someone else") from None
            raise

    def take_lease(self, migration: dict[str, Any], holder: str, seconds: float) -> dict[str, Any]:
        """Hold the migration for `seconds` (renewing our own lease, or taking an expired
        one); Conflict when another replica holds it or changed it in between."""
        meta = migration["metadata"]
        current = lease_holder(migration, at=time.time())
        if current not in (None, holder):
            raise Conflict(f"held by {current}")
        body: dict[str, Any] = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "annotations": {LEASE_HOLDER: holder, LEASE_UNTIL: f"{time.time() + seconds:.3f}"},
            }
        }
        if (finalizers := finalizers_with(migration, ours=True)) is not None:
            body["metadata"]["finalizers"] = finalizers
        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("changed by someone else") from None
            raise

    def release_lease(self, migration: dict[str, Any]) -> dict[str, Any]:
        """Drop the lease of a migration that has ended (nobody drives it any more), and the
        finalizer: a deletion waiting for the end goes through."""
        meta = migration["metadata"]
        body: dict[str, Any] = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "annotations": {LEASE_HOLDER: None, LEASE_UNTIL: None},
            }
        }
        if (finalizers := finalizers_with(migration, ours=False)) is not None:
            body["metadata"]["finalizers"] = finalizers
        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict("changed by someone else") from None
            raise

    # ----- pods -----

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.sanitize_for_serialization(self.core.read_namespaced_pod(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(p) for p in self.core.list_pod_for_all_namespaces().items]

    def pod_names(self, namespace: str) -> set[str]:
        return {p.metadata.name for p in self.core.list_namespaced_pod(namespace).items}

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def set_pod_running(self, namespace: str, name: str, ip: str | None) -> None:
        status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def evict_pod(self, namespace: str, name: str, *, attempts: int = 6, backoff: float = 1.0) -> str:
        """The Eviction API, retrying while a PodDisruptionBudget says 429."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        for attempt in range(attempts):
            try:
                self.core.create_namespaced_pod_eviction(name, namespace, body)
                return "evicted"
            except ApiException as exc:
                if exc.status == 404:
                    return "already gone"
                if exc.status == 429:
                    self.on_eviction_refused()
                if exc.status != 429 or attempt == attempts - 1:
                    raise
                time.sleep(backoff * (2**attempt))
        return "not evicted"

    # ----- nodes -----

    def list_nodes(self) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(n) for n in self.core.list_node().items]

    # ----- events -----

    def record_event(
        self, migration: dict[str, Any], sequence: int, reason: str, kind: str, message: str
    ) -> None:
        """A Kubernetes Event on the Migration, named by its sequence (so a repeat after a
        crash is the same event, not a second one)."""
        meta = migration["metadata"]
        stamp = now_iso()
        body = {
            "metadata": {
                "name": f"{meta['name']}.{meta['uid'][:8]}.{sequence:03d}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": "clm-coordinator"},
            "reportingComponent": "clm-coordinator",
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            if exc.status != 409:
                raise
