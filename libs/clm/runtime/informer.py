"""List + watch through the official Kubernetes client, kept as a local cache.

One thread per kind: list (raw JSON, parsed with orjson: 150,000 pods would take seconds
through the client's model classes), then watch from the list's resourceVersion, applying
each event to the cache and telling the owner which object changed. A watch that ends is
resumed from the last resourceVersion seen; one the server no longer serves (410 Gone)
starts over with a fresh list, reporting only objects that actually changed, so a
reconnect never makes the owner redo (or undo) work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
OnChange = Callable[[str, Key, Obj | None], None]  # kind, key, the object (None: deleted)


@dataclass(frozen=True)
class Source:
    kind: str
    # The client's list function for all namespaces (e.g. CoreV1Api.list_pod_for_all_namespaces).
    list_fn: Callable[..., Any]
    # Its positional arguments (custom objects: group, version, plural).
    args: tuple[Any, ...] = ()


class _RawWatch(watch.Watch):
    """Events as plain dicts: the client's model classes cost ~1 ms per pod and refuse objects
    they find incomplete (a Node without nodeInfo.bootID)."""

    def get_return_type(self, func: Callable[..., Any]) -> None:
        return None


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class Informer:
    def __init__(self, source: Source, on_change: OnChange, *, watch_seconds: int = 300) -> None:
        self.source, self.on_change, self.watch_seconds = source, on_change, watch_seconds
        self.objects: dict[Key, Obj] = {}
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{source.kind}", daemon=True)
        self.relists = 0

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get((namespace, name))

    def _list(self) -> str:
        response = self.source.list_fn(*self.source.args, _preload_content=False)
        body = orjson.loads(response.data)
        fresh = {key_of(item): item for item in body.get("items") or []}
        for key, obj in fresh.items():
            old = self.objects.get(key)
            if old is None or old.get("metadata", {}).get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self.objects[key] = obj
                self.on_change(self.source.kind, key, obj)
        for key in [k for k in self.objects if k not in fresh]:
            del self.objects[key]
            self.on_change(self.source.kind, key, None)
        self.relists += 1
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    def _run(self) -> None:
        resource_version = ""
        delay = 0.5
        while not self._stop.is_set():
            try:
                if not resource_version:
                    resource_version = self._list()
                    self.synced.set()
                resource_version = self._watch(resource_version)
                delay = 0.5
            except ApiException as exc:
                if exc.status == 410:  # our place in history is gone: start over from a list
                    resource_version = ""
                    continue
                log.warning("watch failed", extra={"kind": self.source.kind, "error": str(exc)[:300]})
                time.sleep(delay)
                delay = min(delay * 2, 30)
            except Exception as exc:  # - the API may be away: retry, never die
                log.warning("watch interrupted", extra={"kind": self.source.kind, "error": str(exc)[:300]})
                time.sleep(delay)
                delay = min(delay * 2, 30)

    def _watch(self, resource_version: str) -> str:
        stream = _RawWatch().stream(
            self.source.list_fn,
            *self.source.args,
            resource_version=resource_version,
            timeout_seconds=self.watch_seconds,
            allow_watch_bookmarks=True,
        )
        for event in stream:
            if self._stop.is_set():
                break
            kind, raw = event["type"], event["raw_object"]
            if kind == "ERROR":
                if raw.get("code") == 410:
                    raise ApiException(status=410, reason="Gone")
                raise ApiException(status=raw.get("code", 500), reason=str(raw.get("message")))
            resource_version = str(raw.get("metadata", {}).get("resourceVersion") or resource_version)
            if kind == "BOOKMARK":
                continue
            key = key_of(raw)
            if kind == "DELETED":
                self.objects.pop(key, None)
                self.on_change(self.source.kind, key, None)
            else:
                self.objects[key] = raw
                self.on_change(self.source.kind, key, raw)
        return resource_version


# Kinds whose objects live in a namespace (the rest are cluster-scoped).
NAMESPACED = {
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Migration",
}


def workload_sources(api: Any) -> list[Source]:
    """Pods and what the policy core's eligibility looks up (owners, claims, volumes, nodes)."""
    from kubernetes import client  # - keeps this module importable without building clients

    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    return [
        Source("Pod", core.list_pod_for_all_namespaces),
        Source("Node", core.list_node),
        Source("PersistentVolumeClaim", core.list_persistent_volume_claim_for_all_namespaces),
        Source("PersistentVolume", core.list_persistent_volume),
        Source("ReplicaSet", apps.list_replica_set_for_all_namespaces),
        Source("Deployment", apps.list_deployment_for_all_namespaces),
        Source("StatefulSet", apps.list_stateful_set_for_all_namespaces),
        Source("Job", batch.list_job_for_all_namespaces),
        Source("CronJob", batch.list_cron_job_for_all_namespaces),
    ]


class Caches:
    """Several informers, one per kind, read through the policy core's `lookup`."""

    def __init__(self, sources: list[Source], on_change: OnChange) -> None:
        self.informers = {s.kind: Informer(s, on_change) for s in sources}

    def start(self) -> Caches:
        for informer in self.informers.values():
            informer.start()
        return self

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.values())

    def objects(self, kind: str) -> list[Obj]:
        return list(self.informers[kind].objects.values())

    def lookup(self, kind: str, namespace: str, name: str) -> Obj | None:
        informer = self.informers.get(kind)
        return informer.get(namespace if kind in NAMESPACED else "", name) if informer else None
