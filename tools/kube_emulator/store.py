"""The emulator's state: objects by resource, one resourceVersion counter, an event log
for watch resume, the watchers, and the behaviour a control plane adds to writes
(server-set metadata, conflicts, generation, finalizers). PodDisruptionBudgets and eviction
are in disruptions.py, CustomResourceDefinitions in custom_resources.py, watchers in
watches.py."""

from __future__ import annotations

import bisect
import copy
import itertools
import re
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from tools.kube_emulator import custom_resources, disruptions
from tools.kube_emulator.errors import ApiError, invalid, not_found, qualified
from tools.kube_emulator.resources import Registry, ResourceType
from tools.kube_emulator.validation import FieldError
from tools.kube_emulator.watches import Change, Watcher, anything

Obj = dict[str, Any]
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Entry:
    obj: Obj
    _raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = orjson.dumps(self.obj)
        return self._raw


class Store:
    def __init__(self, registry: Registry | None = None, *, history: int = 200_000) -> None:
        self.registry = registry or Registry()
        self.rv = 1
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Entry]] = {}
        # Sorted keys per resource, rebuilt lazily after an object is added or removed.
        self._key_index: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.log: deque[Change] = deque(maxlen=history)
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()
        self.on_change: list[Callable[[], None]] = []
        for name in DEFAULT_NAMESPACES:
            self._ensure_namespace(name)

    # ----- reading -----

    def bucket(self, rt: ResourceType) -> dict[tuple[str, str], Entry]:
        return self.objects.setdefault(rt.key, {})

    def get(self, rt: ResourceType, namespace: str, name: str) -> Entry:
        entry = self.bucket(rt).get((namespace if rt.namespaced else "", name))
        if entry is None:
            raise not_found(rt, name)
        return entry

    def _sorted_keys(self, rt: ResourceType) -> list[tuple[str, str]]:
        keys = self._key_index.get(rt.key)
        if keys is None:
            keys = self._key_index[rt.key] = sorted(self.bucket(rt))
        return keys

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: Callable[[Mapping[str, str]], bool] | None = None,
        fields: Callable[[Mapping[str, Any]], bool] | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> list[tuple[tuple[str, str], Entry]]:
        """Matching objects in (namespace, name) order, after `after`, at most `limit` (0: all)."""
        bucket = self.bucket(rt)
        keys = self._sorted_keys(rt)
        start = (namespace, "") if namespace else ("", "")
        if after is not None and after > start:
            position = bisect.bisect_right(keys, after)
        else:
            position = bisect.bisect_left(keys, start)
        out: list[tuple[tuple[str, str], Entry]] = []
        for key in itertools.islice(keys, position, None):
            if namespace and key[0] != namespace:
                break
            entry = bucket[key]
            if labels is not None and not labels((entry.obj.get("metadata") or {}).get("labels") or {}):
                continue
            if fields is not None and not fields(entry.obj):
                continue
            out.append((key, entry))
            if limit and len(out) > limit:
                break  # one extra tells the caller there is more
        return out

    # ----- writing -----

    def commit(self, rt: ResourceType, kind: str, obj: Obj, previous: Obj | None) -> Entry:
        self.rv += 1
        meta = obj["metadata"]
        if kind != "DELETED":
            meta["resourceVersion"] = str(self.rv)
        ns = meta.get("namespace", "") if rt.namespaced else ""
        entry = Entry(obj)
        bucket = self.bucket(rt)
        if kind == "DELETED":
            bucket.pop((ns, meta["name"]), None)
            self._key_index.pop(rt.key, None)
            obj = copy.copy(obj)
            obj["metadata"] = {**meta, "resourceVersion": str(self.rv)}
            entry = Entry(obj)
        else:
            if (ns, meta["name"]) not in bucket:
                self._key_index.pop(rt.key, None)
            bucket[(ns, meta["name"])] = entry
        if len(self.log) == self.log.maxlen:
            self.compacted_rv = self.log[0].rv
        change = Change(self.rv, kind, rt.key, ns, entry, previous)
        self.log.append(change)
        for watcher in list(self.watchers):
            if watcher.key == rt.key:
                watcher.offer(change)
        for callback in self.on_change:
            callback()
        return entry

    def _ensure_namespace(self, name: str) -> None:
        rt = self.registry.get("", "v1", "namespaces")
        assert rt is not None
        if ("", name) not in self.bucket(rt):
            self.commit(
                rt,
                "ADDED",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": name,
                        "uid": str(uuid.uuid4()),
                        "creationTimestamp": now(),
                        "labels": {"kubernetes.io/metadata.name": name},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
                None,
            )

    def _check_name(self, rt: ResourceType, name: str | None) -> str:
        if not name:
            raise invalid(
                rt,
                "",
                [
                    FieldError(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        if len(name) > 253 or not NAME_RE.match(name):
            raise invalid(
                rt,
                name,
                [
                    FieldError(
                        "metadata.name",
                        "FieldValueInvalid",
                        f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                        "case alphanumeric characters, '-' or '.', and must start and end with an "
                        "alphanumeric character",
                    )
                ],
            )
        return name

    def create(self, rt: ResourceType, namespace: str | None, body: Obj) -> Entry:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = self._check_name(rt, meta.get("name"))
        if rt.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match "
                    "the namespace sent on the request",
                )
            if rt.plural != "namespaces" and ("", ns) not in self.objects.get(("", "namespaces"), {}):
                raise ApiError(
                    404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = ""
        if (ns, name) in self.bucket(rt):
            raise ApiError(
                409,
                "AlreadyExists",
                f'{qualified(rt)} "{name}" already exists',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        obj = custom_resources.prepare(rt, obj)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        meta.pop("deletionTimestamp", None)
        if rt.status_subresource:
            # As on a real server: status is written only through the status subresource.
            obj.pop("status", None)
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Pod":
            obj["status"] = {"phase": "Pending"}
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(obj)
        entry = self.commit(rt, "ADDED", obj, None)
        self._after_write(rt, entry.obj)
        return entry

    def update(
        self, rt: ResourceType, namespace: str, name: str, body: Obj, *, subresource: str | None = None
    ) -> Entry:
        current = self.get(rt, namespace, name).obj
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified(rt)} "{name}": '
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if (body.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name in the URL")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if subresource == "ephemeralcontainers":
            # `kubectl debug`: only the ephemeral containers change, and only this way.
            merged = copy.deepcopy(current)
            merged.setdefault("spec", {})["ephemeralContainers"] = copy.deepcopy(
                (obj.get("spec") or {}).get("ephemeralContainers") or []
            )
            obj = merged
        elif subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = obj.get("status")
            obj = custom_resources.prepare(rt, merged)
        else:
            if rt.status_subresource and "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
            elif rt.status_subresource:
                obj.pop("status", None)
            obj = custom_resources.prepare(rt, obj)
        meta = obj.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if key in current["metadata"]:
                meta[key] = current["metadata"][key]
            else:
                meta.pop(key, None)
        generation = current["metadata"].get("generation", 1)
        if (
            subresource is None
            and (rt.tracks_generation or rt.schema is not None)
            and obj.get("spec") != current.get("spec")
        ):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj == current:
            return self.get(rt, namespace, name)  # no-op writes do not bump resourceVersion
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self.commit(rt, "DELETED", obj, current)
        if rt.kind == "CustomResourceDefinition":
            self._register_crd(obj)
        entry = self.commit(rt, "MODIFIED", obj, current)
        self._after_write(rt, entry.obj)
        return entry

    def delete(self, rt: ResourceType, namespace: str, name: str) -> Entry:
        current = self.get(rt, namespace, name).obj
        if current["metadata"].get("finalizers") and rt.kind != "Namespace":
            if current["metadata"].get("deletionTimestamp"):
                return self.get(rt, namespace, name)
            obj = copy.deepcopy(current)
            obj["metadata"]["deletionTimestamp"] = now()
            return self.commit(rt, "MODIFIED", obj, current)
        if rt.kind == "Namespace":
            for key, bucket in list(self.objects.items()):
                rtype = next((t for t in self.registry.types.values() if t.key == key), None)
                if rtype and rtype.namespaced:
                    for (ns, obj_name), _ in list(bucket.items()):
                        if ns == name:
                            self.commit(rtype, "DELETED", bucket[(ns, obj_name)].obj, None)
        if rt.kind == "CustomResourceDefinition":
            self._unregister_crd(current)
        entry = self.commit(rt, "DELETED", current, current)
        self._after_write(rt, current)
        return entry

    # ----- what controllers would do -----

    def _after_write(self, rt: ResourceType, obj: Obj) -> None:
        if rt.kind in ("Pod", "PodDisruptionBudget"):
            disruptions.refresh_pdbs(self, obj["metadata"].get("namespace", ""))

    def _register_crd(self, crd: Obj) -> None:
        self.registry.remove_group_resource(*custom_resources.group_resource(crd))
        for rt in custom_resources.resource_types(crd):
            self.registry.add(rt)
        crd["status"] = custom_resources.established_status(crd, now())

    def _unregister_crd(self, crd: Obj) -> None:
        key = custom_resources.group_resource(crd)
        for rt in [t for t in self.registry.types.values() if t.key == key]:
            for _, entry in list(self.bucket(rt).items()):
                self.commit(rt, "DELETED", entry.obj, entry.obj)
            break
        self.registry.remove_group_resource(*key)
        self.objects.pop(key, None)

    # ----- watching -----

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        since: int | None,
        labels: Callable[[Mapping[str, str]], bool] | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
    ) -> Watcher:
        """A watcher fed with changes after `since` (None: every current object as ADDED)."""
        watcher = Watcher(rt.key, namespace, labels or anything, fields or anything)
        if since is None:
            for _, entry in self.list(rt, namespace, labels, fields):
                watcher.queue.put_nowait(("ADDED", entry))
        else:
            if since < self.compacted_rv:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
            for change in self.log:
                if change.rv > since and change.key == rt.key:
                    watcher.offer(change)
        self.watchers.add(watcher)
        return watcher

    def stop_watch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def close_watches(self) -> None:
        """End every watch stream (at shutdown): clients then re-list and watch again."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)

    # ----- persistence -----

    def dump(self) -> bytes:
        objects = [e.obj for bucket in self.objects.values() for e in bucket.values()]
        return orjson.dumps({"resourceVersion": self.rv, "objects": objects})

    def load(self, data: bytes) -> None:
        state = orjson.loads(data)
        objects = state["objects"]
        crds = [o for o in objects if o.get("kind") == "CustomResourceDefinition"]
        for crd in crds:
            self._register_crd(crd)
        for obj in objects:
            rt = self.registry.by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
            if rt is None:
                continue
            meta = obj["metadata"]
            self.bucket(rt)[(meta.get("namespace", "") if rt.namespaced else "", meta["name"])] = Entry(obj)
        self._key_index.clear()
        self.rv = max(self.rv, int(state["resourceVersion"]))
        # History before the restart is gone: watchers must list again.
        self.compacted_rv = self.rv
        self.log.clear()
