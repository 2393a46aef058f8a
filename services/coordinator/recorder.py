"""What a migration run writes down: its status on the Migration object, and its events,
published on NATS and recorded as Kubernetes Events one to one, in order, once per key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clm.contracts import EVENT_TYPE, MigrationReason
from clm.contracts.base import Message
from clm.contracts.events import _MigrationEvent
from clm.contracts.protocol import Phase, is_terminal
from services.coordinator.kube import now_iso
from services.coordinator.lease import MigrationHandle

log = logging.getLogger(__name__)

Publish = Callable[[Message], Awaitable[Any]]


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The Kubernetes client is synchronous: keep the event loop free while it waits."""
    return await asyncio.to_thread(fn, *args, **kwargs)


class StatusRecorder:
    def __init__(self, handle: MigrationHandle, *, publish: Publish) -> None:
        self.handle = handle
        self.kube, self.publish = handle.kube, publish
        migration = handle.obj
        meta = migration["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec: dict[str, Any] = migration.get("spec") or {}
        self.status: dict[str, Any] = dict(migration.get("status") or {})

    @property
    def m(self) -> dict[str, Any]:
        """The Migration as last read or written."""
        return self.handle.obj

    def note(self, **fields: Any) -> None:
        """Kept in the status and written with the next patch: no API round trip while the
        pod is frozen."""
        self.status.update(fields)

    async def patch(self, **fields: Any) -> None:
        self.status.update(fields)
        self.status["observedGeneration"] = self.m["metadata"].get("generation", 1)
        # Which replica drives it, for `kubectl describe` and for anyone checking there is one.
        self.status["driver"] = self.handle.replica
        await self.handle.patch_status(self.status)

    async def phase(self, phase: Phase, message: str, **fields: Any) -> None:
        generation = self.m["metadata"].get("generation", 1)
        wanted = [("Progressing", "False" if is_terminal(phase) else "True")]
        if phase is Phase.FINISHED:
            wanted.append(("Succeeded", "True"))
        if phase is Phase.FAILED:
            wanted.append(("Succeeded", "False"))
        if self.status.get("committed"):
            # Past the commit point: the pod is the destination's (in post-copy, from its
            # resume), and the source can no longer take it back.
            wanted.append(("Committed", "True"))
        earlier = {c.get("type"): c for c in self.status.get("conditions") or []}
        conditions = dict(earlier)
        for kind, status in wanted:
            before = earlier.get(kind) or {}
            conditions[kind] = {
                "type": kind,
                "status": status,
                "reason": str(phase),
                "message": message,
                # A transition is the status flipping, not every phase it passes through.
                "lastTransitionTime": before["lastTransitionTime"]
                if before.get("status") == status and before.get("lastTransitionTime")
                else now_iso(),
                "observedGeneration": generation,
            }
        log.info(
            "migration phase",
            extra={"migration": f"{self.namespace}/{self.name}", "phase": str(phase), "detail": message},
        )
        await self.patch(phase=str(phase), message=message, conditions=list(conditions.values()), **fields)

    async def emit(self, key: str, model: type[_MigrationEvent], message: str, **fields: Any) -> None:
        """Publish the event on NATS and record it on the Migration, once per key, in order."""
        keys: list[str] = list(self.status.get("eventKeys") or [])
        if key in keys:
            return
        sequence = len(keys) + 1
        event = model(
            namespace=self.namespace,
            migration=self.name,
            migration_uid=self.uid,
            pod=self.spec["podName"],
            source_node=self.status.get("sourceNode") or self.spec.get("sourceNode") or "unknown",
            destination_node=self.status.get("destinationNode") or None,
            sequence=sequence,
            message=message,
            message_id=f"{self.uid}:{key}",
            **fields,
        )
        await self.publish(event)
        reason = MigrationReason(event.kind)
        try:
            await in_thread(
                self.kube.record_event, self.m, sequence, reason.value, EVENT_TYPE[reason], message
            )
        except Exception as exc:  # - a Kubernetes Event is best-effort
            log.warning(
                "could not record the Kubernetes Event", extra={"reason": reason.value, "error": str(exc)}
            )
        await self.patch(eventKeys=[*keys, key])

    def emitted(self, key: str) -> bool:
        return key in (self.status.get("eventKeys") or [])
