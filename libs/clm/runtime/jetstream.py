"""Idempotent declaration of CLM's JetStream streams."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

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

    Every service calls this at start-up, often several at once: when two create the same
    stream together, the loser's add fails (the server reports overlapping subjects or a
    name in use) and it takes the update path against the stream the winner made.
    """
    for spec in specs:
        config = stream_config(spec, replicas=replicas)
        await _patiently(functools.partial(_declare_stream, js, spec, config))


# A busy server (a whole cluster of services starting at once, a JetStream leader election)
# can leave an API request unanswered for seconds: that is worth waiting out, not exiting.
API_TIMEOUT_RETRIES = 5


async def _patiently(
    declare: Callable[[], Awaitable[None]], *, retries: int = API_TIMEOUT_RETRIES, pause: float = 1.0
) -> None:
    for attempt in range(retries + 1):
        try:
            return await declare()
        except NatsTimeoutError:
            if attempt == retries:
                raise
            log.warning("JetStream API did not answer; trying again", extra={"attempt": attempt + 1})
            await asyncio.sleep(pause * (attempt + 1))


async def _declare_stream(js: JetStreamContext, spec: StreamSpec, wanted: StreamConfig) -> None:
    for _attempt in range(3):
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(wanted)
            except BadRequestError as exc:
                if exc.err_code not in _LOST_CREATE_RACE:
                    raise
                log.info("stream created concurrently", extra={"stream": spec.name})
                continue
            log.info("declared stream", extra={"stream": spec.name})
            return
        await _update_if_changed(js, spec, info.config, wanted)
        return
    raise RuntimeError(
        f"stream {spec.name} could not be declared: another stream keeps claiming its subjects"
        f" {list(spec.subjects)}; list streams with `nats stream ls` and remove the conflicting one"
    )


# 10058: stream name already in use; 10065: subjects overlap with an existing stream.
_LOST_CREATE_RACE = {10058, 10065}


async def _update_if_changed(
    js: JetStreamContext, spec: StreamSpec, current: StreamConfig, wanted: StreamConfig
) -> None:
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
