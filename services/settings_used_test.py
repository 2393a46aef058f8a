"""Every setting a service declares is read somewhere in that service: a `CLM_*` variable a
user sets must never be silently ignored (CLM_HOLDBACK and the planner's compatibility
profile once were)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clm.runtime.settings import NodeAgentSettings, ServiceSettings
from services.checkpoint_agent.app import CheckpointAgentSettings
from services.coordinator.app import CoordinatorSettings
from services.evictor_planner.app import PlannerSettings
from services.ip_handover_agent.app import IpHandoverSettings
from services.labeler.app import LabelerSettings

SERVICES: dict[str, type[ServiceSettings]] = {
    "checkpoint_agent": CheckpointAgentSettings,
    "coordinator": CoordinatorSettings,
    "evictor_planner": PlannerSettings,
    "ip_handover_agent": IpHandoverSettings,
    "labeler": LabelerSettings,
}
ROOT = Path(__file__).resolve().parent


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_declared_setting_is_read(service: str) -> None:
    cls = SERVICES[service]
    inherited = set(NodeAgentSettings.model_fields) | set(ServiceSettings.model_fields)
    own = [name for name in cls.model_fields if name not in inherited]
    code = "\n".join(p.read_text() for p in (ROOT / service).glob("*.py") if not p.name.endswith("_test.py"))
    unread = [name for name in own if not re.search(rf"(settings|self)\.{name}\b", code)]
    assert not unread, f"{service} declares settings it never reads: {['CLM_' + n.upper() for n in unread]}"
