"""Custom resources against their CRD's OpenAPI v3 schema: validation with the API
server's messages, and pruning of unknown fields (structural schemas drop them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str  # FieldValueRequired, FieldValueNotSupported, FieldValueInvalid, FieldValueTypeInvalid
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _shown(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, int | float) else str(value)


def _type_ok(value: Any, wanted: str) -> bool:
    if wanted in ("integer", "number") and isinstance(value, bool):
        return False
    if wanted == "integer" and isinstance(value, float):
        return value.is_integer()
    expected = _TYPES.get(wanted)
    return expected is None or isinstance(value, expected)


def validate(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    """Every way `value` breaks `schema` (OpenAPI v3 as CRDs use it), worded as the API server
    words it, with the field's path."""
    if value is None:
        return _null(schema, path)
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            return [
                FieldError(
                    path,
                    "FieldValueTypeInvalid",
                    f"Invalid value: {_shown(value)}: must be an integer or a string",
                )
            ]
        return []
    wanted = schema.get("type")
    if wanted and not _type_ok(value, wanted):
        actual = next((t for t, py in _TYPES.items() if isinstance(value, py) and t != "number"), "unknown")
        return [
            FieldError(
                path,
                "FieldValueTypeInvalid",
                f'Invalid value: "{actual}": {path} in body must be of type {wanted}: "{actual}"',
            )
        ]
    errors = _enum(value, schema, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        errors += _number(value, schema, path)
    if isinstance(value, str):
        errors += _string(value, schema, path)
    if isinstance(value, dict):
        errors += _object(value, schema, path)
    if isinstance(value, list):
        errors += _array(value, schema, path)
    return errors


def _null(schema: dict[str, Any], path: str) -> list[FieldError]:
    if schema.get("nullable") or not schema.get("type"):
        return []
    return [
        FieldError(
            path,
            "FieldValueInvalid",
            f"Invalid value: \"null\": {path} in body must be "
            f"of type {schema.get('type', 'object')}: \"null\"",
        )
    ]


def _enum(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    if "enum" not in schema or value in schema["enum"]:
        return []
    supported = ", ".join(_shown(v) for v in schema["enum"])
    return [
        FieldError(
            path,
            "FieldValueNotSupported",
            f"Unsupported value: {_shown(value)}: supported values: {supported}",
        )
    ]


def _number(value: float, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {value}: {path} in body "
                f"should be greater than or equal to {schema['minimum']}",
            )
        )
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {value}: {path} in body should be less than or equal to {schema['maximum']}",
            )
        )
    return errors


def _string(value: str, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_shown(value)}: {path} "
                f"in body should be at least {schema['minLength']} chars long",
            )
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(
            FieldError(
                path, "FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes"
            )
        )
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_shown(value)}: {path} in body should match '{schema['pattern']}'",
            )
        )
    return errors


def _object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = [
        FieldError(f"{path}.{name}", "FieldValueRequired", "Required value")
        for name in schema.get("required") or []
        if name not in value
    ]
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in props:
            errors += validate(item, props[key], f"{path}.{key}")
        elif isinstance(extra, dict):
            errors += validate(item, extra, f"{path}.{key}")
    return errors


def _array(value: list[Any], schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            FieldError(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
        )
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            errors += validate(item, items, f"{path}[{i}]")
    return errors


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """Drop fields the schema does not know (unless it preserves unknown fields)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return value
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if key in props:
                out[key] = prune(item, props[key])
            elif isinstance(extra, dict):
                out[key] = prune(item, extra)
            elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def validate_custom_resource(obj: dict[str, Any], schema: dict[str, Any]) -> list[FieldError]:
    """Errors for everything but apiVersion/kind/metadata, which the server handles."""
    errors = []
    props = schema.get("properties") or {}
    for key, item in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key in props:
            errors += validate(item, props[key], key)
    for name in schema.get("required") or []:
        if name not in obj:
            errors.append(FieldError(name, "FieldValueRequired", "Required value"))
    return errors


def unknown_fields(obj: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Dotted paths of fields the schema would prune (metadata, apiVersion, kind excepted)."""
    found: list[str] = []
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return found
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in obj.items():
            where = f"{path}.{key}" if path else key
            if not path and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                found += unknown_fields(item, props[key], where)
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, where)
            elif extra is not True and not schema.get("x-kubernetes-preserve-unknown-fields"):
                found.append(where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill `default:` values of missing properties, as the API server does."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = sub["default"]
            if key in value:
                value[key] = apply_defaults(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value
