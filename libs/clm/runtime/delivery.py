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

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware

from clm.contracts import ContractError
from clm.runtime.errors import PermanentError

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from clm.runtime.app import ServiceApp

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


def delivery_middleware(app: ServiceApp) -> type[BaseMiddleware]:
    """The FastStream middleware applying each consumer's policy, bound to one app."""

    class DeliveryPolicy(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            raw: Msg = msg.raw_message
            meta = raw.metadata
            policy = app.policies.get(meta.consumer)
            if policy is None:
                return await call_next(msg)
            started = time.perf_counter()
            try:
                result = await call_next(msg)
            except ContractError as exc:
                await app.dead_letter(raw, policy, cause="malformed", reason=str(exc))
                return None
            except PermanentError as exc:
                await app.dead_letter(raw, policy, cause="rejected", reason=str(exc))
                return None
            except Exception as exc:
                await _handler_failed(app, raw, policy, exc)
                return None
            finally:
                app.metrics.handle_seconds.labels(policy.durable).observe(time.perf_counter() - started)
            await raw.ack()
            app.metrics.handled.labels(policy.durable, "ack").inc()
            return result

    return DeliveryPolicy


async def _handler_failed(app: ServiceApp, raw: Msg, policy: ConsumerPolicy, exc: Exception) -> None:
    delivery = raw.metadata.num_delivered
    error = f"{type(exc).__name__}: {exc}"
    if delivery >= policy.max_deliver:
        await app.dead_letter(
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
    app.metrics.handled.labels(policy.durable, "retry").inc()
