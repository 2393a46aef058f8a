"""Server-side printing: the meta.k8s.io/v1 Table that `kubectl get` asks for."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from tools.kube_emulator.resources import ResourceType

_FILTER = re.compile(r"^\[\?\(@\.([A-Za-z0-9_.]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")
_INDEX = re.compile(r"^\[(\d+)\]")
_NAME = re.compile(r"^\.?([A-Za-z0-9_-]+)")


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: .a.b, [0], [?(@.type=='Ready')].status."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values = [obj]
    while path:
        if m := _FILTER.match(path):
            key, wanted = m.groups()
            values = [
                item
                for v in values
                if isinstance(v, list)
                for item in v
                if isinstance(item, dict) and str(json_path(item, "." + key)) == wanted
            ]
        elif m := _INDEX.match(path):
            index = int(m.group(1))
            values = [v[index] for v in values if isinstance(v, list) and len(v) > index]
        elif m := _NAME.match(path):
            values = [v.get(m.group(1)) for v in values if isinstance(v, dict)]
            values = [v for v in values if v is not None]
        else:
            return None
        path = path[m.end() :]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def human_duration(seconds: float) -> str:
    """Kubernetes' duration.HumanDuration, as the API server renders Age columns."""
    if seconds < -1:
        return "<invalid>"
    seconds = max(0, int(seconds))
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // (24 * 365), (hours // 24) % 365
    return f"{years}y{days}d" if years < 8 and days else f"{years}y"


def _age(value: Any) -> Any:
    try:
        then = datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return value
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _pod_cells(obj: dict[str, Any]) -> dict[str, Any]:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    return {
        "Ready": f"{ready}/{len(containers)}",
        "Status": phase,
        "Restarts": sum(int(s.get("restartCount", 0)) for s in statuses),
    }


def _node_status(obj: dict[str, Any]) -> str:
    ready = json_path(obj, ".status.conditions[?(@.type=='Ready')].status")
    status = "Ready" if ready == "True" else ("NotReady" if ready else "Unknown")
    if (obj.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    return status


def cell(rt: ResourceType, column_name: str, column_type: str, path: str, obj: dict[str, Any]) -> Any:
    if rt.kind == "Pod" and column_name in ("Ready", "Status", "Restarts"):
        return _pod_cells(obj)[column_name]
    if rt.kind == "Node" and column_name == "Status":
        return _node_status(obj)
    value = json_path(obj, path)
    if value is None:
        return None
    if column_type == "date":
        return _age(value)
    if isinstance(value, list | dict):
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return value


def definitions(rt: ResourceType) -> list[dict[str, Any]]:
    cols = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "priority": 0,
            "description": "Name must be unique within a namespace.",
        }
    ]
    cols += [
        {
            "name": c.name,
            "type": c.type,
            "format": c.format,
            "priority": c.priority,
            "description": c.description or c.name,
        }
        for c in rt.columns
    ]
    return cols


def row(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    cells = [meta.get("name")] + [cell(rt, c.name, c.type, c.json_path, obj) for c in rt.columns]
    return {
        "cells": cells,
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
    }


def table(
    rt: ResourceType, objs: list[dict[str, Any]], resource_version: str, continue_token: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions(rt),
        "rows": [row(rt, o) for o in objs],
    }
