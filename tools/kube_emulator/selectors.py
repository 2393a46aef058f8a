"""Label and field selectors, as the API server parses them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    pass


_SET = re.compile(r"^\s*(!)?\s*([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_CMP = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


LabelTest = Callable[[Mapping[str, str]], bool]


def _label_equals(key: str, value: str, *, negate: bool) -> LabelTest:
    return lambda labels: (labels.get(key) == value) != negate


def _label_in(key: str, wanted: set[str], *, negate: bool) -> LabelTest:
    return lambda labels: (labels.get(key) in wanted) != negate


def _label_present(key: str, *, negate: bool) -> LabelTest:
    return lambda labels: (key in labels) != negate


def label_selector(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over a labels dict; raises SelectorError for a malformed selector."""
    if not selector:
        return lambda labels: True
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split(selector):
        cmp = _CMP.match(part)
        if cmp:
            key, op, value = cmp.groups()
            tests.append(_label_equals(key, value, negate=op == "!="))
            continue
        match = _SET.match(part)
        if not match:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        negated, key, op, values = match.groups()
        if op:
            wanted = {v.strip() for v in values.split(",") if v.strip()}
            tests.append(_label_in(key, wanted, negate=op == "notin"))
        else:
            tests.append(_label_present(key, negate=bool(negated)))
    return lambda labels: all(t(labels) for t in tests)


def _path_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(selector: str | None) -> Predicate:
    """Field selectors: `path=value`, `path==value`, `path!=value` joined by commas; any
    dotted path works (metadata.name, metadata.namespace, spec.nodeName, status.phase...)."""
    if not selector:
        return lambda obj: True
    tests: list[Predicate] = []
    for part in _split(selector):
        match = _CMP.match(part)
        if not match:
            raise SelectorError(f"invalid field selector: {part.strip()!r}")
        path, op, value = match.groups()
        tests.append(_field_equals(path, value, negate=op == "!="))
    return lambda obj: all(t(obj) for t in tests)


def _field_equals(path: str, value: str, *, negate: bool) -> Predicate:
    return lambda obj: (_path_value(obj, path) == value) != negate


def selectors(request: Any) -> tuple[Any, Any]:
    """Predicates for a request's labelSelector and fieldSelector; None where there is none."""
    labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
    return (label_selector(labels) if labels else None, field_selector(fields) if fields else None)
