"""What happens to a message after its handler: ack, retry later, or dead-letter.

Every consumer has a `ConsumerPolicy`. The handler's outcome decides:
- returns            -> ack
- ContractError      -> dead-letter at once (a malformed message never gets better)
- PermanentError     -> dead-letter at once (the handler says retrying cannot help)
- other exception    -> nak with the next backoff delay, until max_deliver tries, then
                        dead-letter with the last error
A message whose handler never finishes (the process died each time) reaches JetStream's
own max_deliver; the server's MAX_DELIVERIES advisory is turned into a dead letter too.
Nothing is dropped silently and nothing is redelivered forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from faststream import BaseMiddleware
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from clm.contracts import ContractError, streams
from clm.runtime.errors import PermanentError
from clm.runtime.metrics import RuntimeMetrics

log = logging.getLogger(__name__)

# Headers on a dead letter; its payload is the original message, byte for byte.
H_REASON = "Clm-Dlq-Reason"
H_CAUSE = "Clm-Dlq-Cause"
H_SUBJECT = "Clm-Dlq-Subject"
H_STREAM = "Clm-Dlq-Stream"
H_STREAM_SEQ = "Clm-Dlq-Stream-Seq"
H_CONSUMER = "Clm-Dlq-Consumer"
H_DELIVERIES = "Clm-Dlq-Deliveries"


@dataclass(frozen=True, slots=True)
class ConsumerPolicy:
    durable: str
    stream: str
    filter_subject: str
    max_deliver: int
    backoff_seconds: tuple[float, ...]
    dead_letter_subject: str
    # Long handlers tell JetStream they are still at it this often (None: never), so a short
    # ack wait redelivers promptly after a crash without cutting a long step short.
    heartbeat_seconds: float | None = None

    def delay_after(self, delivery: int) -> float:
        """Seconds to wait before redelivering after failed delivery number `delivery`."""
        return self.backoff_seconds[min(delivery, len(self.backoff_seconds)) - 1]


def _header_safe(text: str, limit: int = 1000) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def dead_letter_headers(
    *, policy: ConsumerPolicy, cause: str, reason: str, subject: str, stream_seq: int, deliveries: int
) -> dict[str, str]:
    return {
        H_REASON: _header_safe(reason),
        H_CAUSE: cause,
        H_SUBJECT: subject,
        H_STREAM: policy.stream,
        H_STREAM_SEQ: str(stream_seq),
        H_CONSUMER: policy.durable,
        H_DELIVERIES: str(deliveries),
        # One dead letter per original message, even if moving it is retried.
        "Nats-Msg-Id": f"dlq:{policy.stream}:{stream_seq}",
    }


class Deliveries:
    """The consumers' policies and what carries them out: acks, retries, dead letters."""

    def __init__(self, *, metrics: RuntimeMetrics, js: Callable[[], JetStreamContext]) -> None:
        self.metrics = metrics
        # The JetStream context exists once connected; asked for when a message needs it.
        self._js = js
        self.policies: dict[str, ConsumerPolicy] = {}

    def register(self, policy: ConsumerPolicy) -> None:
        if policy.durable in self.policies:
            raise ValueError(f"durable consumer {policy.durable!r} is registered twice")
        self.policies[policy.durable] = policy

    async def dead_letter(self, raw: Msg, policy: ConsumerPolicy, *, cause: str, reason: str) -> None:
        """Copy a message to its consumer's dead-letter subject, then stop its delivery."""
        meta = raw.metadata
        headers = dead_letter_headers(
            policy=policy,
            cause=cause,
            reason=reason,
            subject=raw.subject,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
        )
        try:
            await self._js().publish(
                policy.dead_letter_subject, raw.data, headers=headers, stream=streams.DEAD_LETTERS.name
            )
        except Exception as exc:
            # The message is not lost: leave it to be redelivered and moved later.
            log.error(
                "could not publish dead letter; will retry",
                extra={"consumer": policy.durable, "error": repr(exc)},
            )
            await raw.nak(delay=policy.backoff_seconds[-1])
            return
        await raw.term()
        self.metrics.handled.labels(policy.durable, "dead_letter").inc()
        self.metrics.dead_letters.labels(policy.durable, cause).inc()
        log.error(
            "message dead-lettered",
            extra={
                "consumer": policy.durable,
                "subject": raw.subject,
                "cause": cause,
                "reason": reason,
                "dead_letter_subject": policy.dead_letter_subject,
            },
        )

    async def on_max_deliveries(self, advisory: Msg) -> None:
        """JetStream gave up redelivering (the handler never finished): dead-letter it."""
        js = self._js()
        try:
            info = _json_object(advisory.data)
            policy = self.policies[info["consumer"]]
            seq = int(info["stream_seq"])
            stored = await js.get_msg(policy.stream, seq)
        except Exception as exc:
            log.error("could not handle a max-deliveries advisory", extra={"error": repr(exc)})
            return
        headers = dead_letter_headers(
            policy=policy,
            cause="max-deliveries",
            reason=f"no ack after {info.get('deliveries')} deliveries (handler crashed or timed out)",
            subject=stored.subject or "",
            stream_seq=seq,
            deliveries=int(info.get("deliveries", 0)),
        )
        await js.publish(
            policy.dead_letter_subject, stored.data or b"", headers=headers, stream=streams.DEAD_LETTERS.name
        )
        if policy.stream == streams.COMMANDS.name:
            # A work-queue message nobody will ack again would sit there until max_age.
            with contextlib.suppress(Exception):
                await js.delete_msg(policy.stream, seq)
        self.metrics.dead_letters.labels(policy.durable, "max-deliveries").inc()
        log.error(
            "message dead-lettered after max deliveries",
            extra={"consumer": policy.durable, "stream_seq": seq},
        )

    async def handler_failed(self, raw: Msg, policy: ConsumerPolicy, exc: Exception) -> None:
        delivery = raw.metadata.num_delivered
        error = f"{type(exc).__name__}: {exc}"
        if delivery >= policy.max_deliver:
            await self.dead_letter(
                raw,
                policy,
                cause="handler-error",
                reason=f"failed on all {delivery} deliveries; last error: {error}",
            )
            return
        delay = policy.delay_after(delivery)
        log.warning(
            "handler failed, will retry",
            extra={
                "consumer": policy.durable,
                "subject": raw.subject,
                "delivery": delivery,
                "retry_in_seconds": delay,
                "error": error,
            },
            exc_info=exc,
        )
        await raw.nak(delay=delay)
        self.metrics.handled.labels(policy.durable, "retry").inc()


def delivery_middleware(deliveries: Deliveries) -> type[BaseMiddleware]:
    """The FastStream middleware applying each consumer's policy."""

    class DeliveryPolicy(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            raw: Msg = msg.raw_message
            meta = raw.metadata
            policy = deliveries.policies.get(meta.consumer)
            if policy is None:
                return await call_next(msg)
            started = time.perf_counter()
            heartbeat = (
                asyncio.create_task(_keep_in_progress(raw, policy.heartbeat_seconds))
                if policy.heartbeat_seconds
                else None
            )
            try:
                result = await call_next(msg)
            except ContractError as exc:
                await deliveries.dead_letter(raw, policy, cause="malformed", reason=str(exc))
                return None
            except PermanentError as exc:
                await deliveries.dead_letter(raw, policy, cause="rejected", reason=str(exc))
                return None
            except Exception as exc:
                await deliveries.handler_failed(raw, policy, exc)
                return None
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                deliveries.metrics.handle_seconds.labels(policy.durable).observe(
                    time.perf_counter() - started
                )
            await raw.ack()
            deliveries.metrics.handled.labels(policy.durable, "ack").inc()
            return result

    return DeliveryPolicy


async def _keep_in_progress(raw: Msg, every: float) -> None:
    """+WPI every `every` seconds: the handler is alive, JetStream restarts its ack wait."""
    while True:
        await asyncio.sleep(every)
        try:
            await raw.in_progress()
        except Exception as exc:  # - NATS away: the ack wait runs on, as it would anyway
            log.warning("could not mark a message in progress", extra={"error": str(exc)[:200]})


def _json_object(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("advisory is not a JSON object")
    return value
