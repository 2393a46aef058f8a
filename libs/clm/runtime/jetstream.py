"""Idempotent declaration of CLM's JetStream streams."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from clm.contracts.streams import StreamSpec

log = logging.getLogger(__name__)

_RETENTION = {"limits": RetentionPolicy.LIMITS, "workqueue": RetentionPolicy.WORK_QUEUE}


def stream_config(spec: StreamSpec, *, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=_RETENTION[spec.retention],
        max_age=spec.max_age_seconds,
        duplicate_window=spec.duplicate_window_seconds,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )


async def declare_streams(js: JetStreamContext, specs: tuple[StreamSpec, ...], *, replicas: int) -> None:
    """Create each stream, or bring an existing one's settings up to date.

    Every service calls this at start-up; concurrent calls converge because add/update are
    idempotent on the server for identical configurations.
    """
    for spec in specs:
        wanted = stream_config(spec, replicas=replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("declared stream", extra={"stream": spec.name})
            continue
        current = info.config
        if (
            sorted(current.subjects or []) != sorted(wanted.subjects or [])
            or current.max_age != wanted.max_age
            or current.duplicate_window != wanted.duplicate_window
            or current.description != wanted.description
        ):
            if current.retention != wanted.retention:
                raise RuntimeError(
                    f"stream {spec.name} exists with retention {current.retention}, CLM needs"
                    f" {wanted.retention}; retention cannot change in place: delete the stream"
                    " (nats stream rm) and restart"
                )
            await js.update_stream(wanted)
            log.info("updated stream", extra={"stream": spec.name})
