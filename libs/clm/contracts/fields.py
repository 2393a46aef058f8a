"""Field types shared by the contracts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

# Kubernetes object names: DNS subdomain (RFC 1123), at most 253 characters.
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
K8sName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)]
NodeName = K8sName

# Seconds per migration phase: freezing, frozen, memdump, memwrite, transfer, restore...
PhaseName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
PhaseTimings = dict[PhaseName, Annotated[float, Field(ge=0)]]


class MigrationStrategy(StrEnum):
    AUTO = "auto"
    PRE_COPY = "pre-copy"
    STOP_AND_COPY = "stop-and-copy"
    POST_COPY = "post-copy"


class Fallback(StrEnum):
    """What the label matrix says to do when a live migration fails."""

    EVICT = "evict"
    RESTORE_ON_SOURCE = "restore-on-source"
    NONE = "none"
