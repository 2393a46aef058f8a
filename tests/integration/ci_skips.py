"""Under CI (`CI=true`) a skipped test fails the run: CI machines have root, CRIU, runc and
kubectl, so a test that skips there is a feature nobody tested, not a pass. Elsewhere (a
laptop without root) skips stay skips, each with its reason."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and under_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"
