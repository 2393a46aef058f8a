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
    parts, depth, current = [], 0, []
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


def label_selector(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over a labels dict; raises SelectorError for a malformed selector."""
    if not selector:
        return lambda labels: True
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split(selector):
        cmp = _CMP.match(part)
        if cmp:
            key, op, value = cmp.groups()
            if op == "!=":
                tests.append(lambda ls, k=key, v=value: ls.get(k) != v)
            else:
                tests.append(lambda ls, k=key, v=value: ls.get(k) == v)
            continue
        match = _SET.match(part)
        if not match:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        negated, key, op, values = match.groups()
        if op:
            wanted = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                tests.append(lambda ls, k=key, w=wanted: ls.get(k) in w)
            else:
                tests.append(lambda ls, k=key, w=wanted: ls.get(k) not in w)
        elif negated:
            tests.append(lambda ls, k=key: k not in ls)
        else:
            tests.append(lambda ls, k=key: k in ls)
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
        if op == "!=":
            tests.append(lambda o, p=path, v=value: _path_value(o, p) != v)
        else:
            tests.append(lambda o, p=path, v=value: _path_value(o, p) == v)
    return lambda obj: all(t(obj) for t in tests)
