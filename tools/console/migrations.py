"""Migration objects as the command-line tools make and follow them: a body for the API and
a watch that reports each change of phase until the move ends (no polling)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch

from clm.contracts import protocol
from clm.contracts.protocol import Phase, is_terminal

Status = dict[str, Any]


def migration_body(
    name: str,
    pod: str,
    *,
    destination: str | None = None,
    fallback: str | None = None,
    strategy: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podName": pod}
    optional = {"destinationNode": destination, "fallback": fallback, "strategy": strategy}
    spec.update({key: value for key, value in optional.items() if value})
    return {
        "apiVersion": protocol.API_VERSION,
        "kind": protocol.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def create_migration(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(
        protocol.GROUP, protocol.VERSION, namespace, protocol.PLURAL, body
    )


def migration_list(custom: client.CustomObjectsApi, namespace: str | None, **params: Any) -> dict[str, Any]:
    """The list (or, with `watch=True`, the watch) of one namespace's Migrations, or all
    namespaces' when `namespace` is None."""
    if namespace is None:
        return custom.list_cluster_custom_object(protocol.GROUP, protocol.VERSION, protocol.PLURAL, **params)
    return custom.list_namespaced_custom_object(
        protocol.GROUP, protocol.VERSION, namespace, protocol.PLURAL, **params
    )


def list_migrations(custom: client.CustomObjectsApi, namespace: str | None) -> list[dict[str, Any]]:
    return list(migration_list(custom, namespace)["items"])


def running_migrations(custom: client.CustomObjectsApi, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The pod's Migrations that have not ended."""
    return [
        m
        for m in list_migrations(custom, namespace)
        if m["spec"].get("podName") == pod and not is_terminal((m.get("status") or {}).get("phase"))
    ]


def follow(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    *,
    timeout: float,
    on_change: Callable[[Status], None] | None = None,
) -> Status | None:
    """Watch one Migration until its phase is terminal; its last status, or None when the
    timeout passed first. `on_change` sees every new (phase, message, progress)."""
    deadline = time.monotonic() + timeout
    last: tuple[str, str, str] | None = None
    resource_version: str | None = None
    while (left := deadline - time.monotonic()) > 0:
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            protocol.GROUP,
            protocol.VERSION,
            namespace,
            protocol.PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            timeout_seconds=max(1, int(left)),
        )
        for event in stream:
            obj = event["object"]
            resource_version = obj["metadata"].get("resourceVersion", resource_version)
            status: Status = obj.get("status") or {}
            seen = (
                status.get("phase") or Phase.PENDING,
                status.get("message", ""),
                repr(sorted((status.get("progress") or {}).items())),
            )
            if seen != last:
                last = seen
                if on_change is not None:
                    on_change(status)
            if is_terminal(status.get("phase")):
                return status
            if time.monotonic() >= deadline:
                break
    return None
