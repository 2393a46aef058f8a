"""CustomResourceDefinitions as the API server serves them: each served version becomes a
resource type (its schema, printer columns, subresources), and custom objects are pruned,
defaulted and validated against that schema on every write."""

from __future__ import annotations

from typing import Any

from tools.kube_emulator.errors import invalid
from tools.kube_emulator.resources import Column, ResourceType
from tools.kube_emulator.validation import apply_defaults, prune, validate_custom_resource

Obj = dict[str, Any]


def group_resource(crd: Obj) -> tuple[str, str]:
    spec = crd.get("spec") or {}
    return spec.get("group", ""), (spec.get("names") or {}).get("plural", "")


def resource_types(crd: Obj) -> list[ResourceType]:
    """One resource type per served version of the definition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = group_resource(crd)
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        columns = [
            Column(
                c["name"],
                c.get("type", "string"),
                c["jsonPath"],
                c.get("description", ""),
                c.get("priority", 0),
                c.get("format", ""),
            )
            for c in version.get("additionalPrinterColumns") or []
        ]
        if not any(c.name == "Age" for c in columns):
            columns.append(Column("Age", "date", ".metadata.creationTimestamp"))
        types.append(
            ResourceType(
                group,
                version["name"],
                names.get("kind", ""),
                plural,
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                status_subresource="status" in (version.get("subresources") or {}),
                tracks_generation=True,
                columns=columns,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                categories=tuple(names.get("categories") or ()),
            )
        )
    return types


def established_status(crd: Obj, stamp: str) -> Obj:
    spec = crd.get("spec") or {}
    return {
        "acceptedNames": spec.get("names") or {},
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        "conditions": [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": stamp}
            for t, r, m in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ],
    }


def prepare(rt: ResourceType, obj: Obj) -> Obj:
    """A custom object as it is stored: unknown fields pruned, defaults applied, validated
    (422 naming each field); any other object as it is."""
    if rt.schema is None:
        return obj
    pruned = apply_defaults(prune(obj, rt.schema), rt.schema)
    for key in ("apiVersion", "kind", "metadata"):
        if key in obj:
            pruned[key] = obj[key]
    errors = validate_custom_resource(pruned, rt.schema)
    if errors:
        raise invalid(rt, (obj.get("metadata") or {}).get("name", ""), errors)
    return pruned
