"""Reading the objects `clm explain` needs through the official client's own methods, as
plain dicts (the API's JSON, unparsed by the client's models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]


def object_reader(api: client.ApiClient) -> Callable[[str, str, str], Obj | None]:
    """lookup(kind, namespace, name) -> the object, or None if it does not exist (or is of a
    kind the policy core never asks about)."""
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    namespaced: dict[str, Callable[..., Any]] = {
        "Pod": core.read_namespaced_pod,
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
        "ReplicaSet": apps.read_namespaced_replica_set,
        "Deployment": apps.read_namespaced_deployment,
        "StatefulSet": apps.read_namespaced_stateful_set,
        "DaemonSet": apps.read_namespaced_daemon_set,
        "Job": batch.read_namespaced_job,
        "CronJob": batch.read_namespaced_cron_job,
    }
    cluster: dict[str, Callable[..., Any]] = {
        "Node": core.read_node,
        "PersistentVolume": core.read_persistent_volume,
    }

    def lookup(kind: str, namespace: str, name: str) -> Obj | None:
        if not name:
            return None
        try:
            if kind in namespaced:
                response = namespaced[kind](name, namespace, _preload_content=False)
            elif kind in cluster:
                response = cluster[kind](name, _preload_content=False)
            else:
                return None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found: Obj = orjson.loads(response.data)
        return found

    return lookup
