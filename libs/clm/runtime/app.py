"""ServiceApp: the runtime one CLM service process is built on.

    app = ServiceApp(name="coordinator", version=__version__, settings=settings,
                     description="...")

    @app.consumer(RequestMigration, durable="coordinator-requests",
                  filter_subject=subjects.ALL_MIGRATION_REQUESTS, stream=streams.COMMANDS)
    async def on_request(command: RequestMigration) -> None: ...

    await app.run()   # until SIGTERM/SIGINT, then drains in-flight messages

Consumers are durable JetStream pull consumers with explicit acks (replicas of a service
share one durable name, so work spreads across them); the delivery policy (retries with
backoff, dead letters) lives in `clm.runtime.delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import nats.errors
import nats.js.errors
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.specification import AsyncAPI
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from clm.contracts import Message, NodeCapabilities, decode, encode, streams, subjects
from clm.contracts.streams import StreamSpec
from clm.runtime.connection import security
from clm.runtime.delivery import ConsumerPolicy, Deliveries, delivery_middleware
from clm.runtime.http import HealthServer
from clm.runtime.jetstream import declare_streams
from clm.runtime.metrics import RuntimeMetrics
from clm.runtime.settings import ServiceSettings

Handler = Callable[..., Awaitable[None]]

log = logging.getLogger(__name__)

_ADVISORY_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


class ServiceApp:
    def __init__(
        self,
        *,
        name: str,
        version: str,
        settings: ServiceSettings,
        description: str,
    ) -> None:
        self.name = name
        self.version = version
        self.settings = settings
        self.description = description
        self.metrics = RuntimeMetrics(name, version)
        self.deliveries = Deliveries(metrics=self.metrics, js=lambda: self.js)
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._before_consuming: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._stop_requested = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._advisory_subs: list[Any] = []
        # Kept from the connection's own callbacks: whether NATS is reachable right now.
        self._connected = False
        self._js: JetStreamContext | None = None
        self.broker = NatsBroker(
            settings.nats_servers,
            name=f"clm-{name}",
            apply_types=False,
            middlewares=[delivery_middleware(self.deliveries)],
            graceful_timeout=settings.shutdown_grace_seconds,
            security=security(settings),
            connect_timeout=max(1, round(settings.nats_connect_timeout_seconds)),
            js_options={"timeout": settings.nats_request_timeout_seconds},
            max_reconnect_attempts=-1,
            logger=logging.getLogger(f"clm.{name}.broker"),
            # FastStream logs every message at INFO; keep that for debugging only.
            log_level=logging.DEBUG,
            description=description,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )
        self.http = HealthServer(
            host=settings.http_host,
            port=settings.http_port,
            registry=self.metrics.registry,
            readiness=self.readiness,
        )

    # ----- declaring what the service consumes and publishes -----

    def consumer(
        self,
        accepts: type[Message] | Iterable[type[Message]],
        *,
        durable: str,
        filter_subject: str,
        stream: StreamSpec,
        batch_size: int = 16,
        max_deliver: int | None = None,
        backoff_seconds: Iterable[float] | None = None,
        ack_wait_seconds: float | None = None,
        description: str | None = None,
        max_workers: int = 1,
        inactive_threshold_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        title: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler on a durable pull consumer accepting the given message kinds.
        With max_workers > 1 up to that many messages are handled at once (their order is
        then not kept: handlers must serialise what needs it). A consumer with an inactive
        threshold is deleted by NATS after that long without a client."""
        models = (accepts,) if isinstance(accepts, type) else tuple(accepts)
        max_deliver = max_deliver or self.settings.max_deliver
        policy = ConsumerPolicy(
            durable=durable,
            stream=stream.name,
            filter_subject=filter_subject,
            max_deliver=max_deliver,
            backoff_seconds=tuple(backoff_seconds or self.settings.redelivery_backoff_seconds),
            dead_letter_subject=subjects.dead_letter(durable),
            heartbeat_seconds=heartbeat_seconds,
        )
        self.deliveries.register(policy)

        async def decoder(msg: Any) -> Message:
            return decode(msg.body, models)

        def register(handler: Handler) -> Handler:
            extra: dict[str, Any] = {"max_workers": max_workers} if max_workers > 1 else {}
            self.broker.subscriber(
                filter_subject,
                stream=JStream(stream.name, declare=False),
                durable=durable,
                pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
                ack_policy=AckPolicy.MANUAL,
                config=ConsumerConfig(
                    max_deliver=max_deliver,
                    ack_wait=ack_wait_seconds or self.settings.ack_wait_seconds,
                    max_ack_pending=max(batch_size * 4, 64),
                    # NATS removes the consumer after this long without a client (per-replica ones).
                    inactive_threshold=inactive_threshold_seconds,
                ),
                decoder=decoder,
                # The AsyncAPI document's name for it (stable where the durable name is per replica).
                title=title or durable,
                description=description or handler.__doc__,
                **extra,
            )(handler)
            return handler

        return register

    def publishes(self, model: type[Message], subject: str, description: str) -> None:
        """Document (in the AsyncAPI spec) that this service publishes `model` on `subject`."""
        self.broker.publisher(
            subject, schema=model, title=f"{self.name}:{model.__name__}", description=description
        )

    def before_consuming(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `fn` once connected and streams declared, before any message is taken: what
        must be settled before a handler may run (e.g. finishing what a dead process began)."""
        self._before_consuming.append(fn)
        return fn

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `fn` once connected, streams declared and consumers bound."""
        self._on_start.append(fn)
        return fn

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `fn` first when stopping, while NATS is still connected (errors are logged)."""
        self._on_stop.append(fn)
        return fn

    # ----- publishing -----

    @property
    def nc(self) -> Client:
        """The NATS connection (once started)."""
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.broker.connection.jetstream(timeout=self.settings.nats_request_timeout_seconds)
        return self._js

    @property
    def policies(self) -> dict[str, ConsumerPolicy]:
        return self.deliveries.policies

    async def announce(self, message: Message) -> None:
        """Publish on plain NATS, stored nowhere and never retried: for what is stale in
        seconds (a step's progress). Nobody listening is fine; a lost one is replaced soon."""
        await self.nc.publish(message.subject(), encode(message), headers={"Clm-Kind": message.kind})
        self.metrics.published.labels(message.kind).inc()

    async def publish(self, message: Message) -> PubAck:
        """Publish to JetStream with Nats-Msg-Id = message_id (a retry is stored once)."""
        subject = message.subject()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_retry_seconds
        while True:
            try:
                ack = await self.js.publish(
                    subject,
                    encode(message),
                    stream=streams.stream_for(subject).name,
                    headers={"Nats-Msg-Id": message.message_id, "Clm-Kind": message.kind},
                )
                break
            except (nats.errors.Error, TimeoutError) as exc:
                # NATS restarting or a JetStream leader moving: the same message, again. An
                # answer from JetStream itself (APIError: a full stream, a limit) is final.
                if isinstance(exc, nats.js.errors.APIError) or loop.time() >= deadline:
                    raise
                self.metrics.publish_retries.labels(message.kind).inc()
                log.warning("publish of %s not taken (%r): trying again", message.kind, exc)
                await asyncio.sleep(0.5)
        self.metrics.published.labels(message.kind).inc()
        if ack.duplicate:
            self.metrics.publish_duplicates.labels(message.kind).inc()
        return ack

    async def node_capabilities(self, node: str) -> NodeCapabilities | None:
        """What `node`'s checkpoint agent last published about itself (None: nothing yet)."""
        try:
            raw = await self.js.get_last_msg(streams.EVENTS.name, subjects.node_capabilities(node))
        except NotFoundError:
            return None
        return decode(raw.data or b"", NodeCapabilities)

    # ----- lifecycle -----

    def readiness(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting: not yet connected to NATS with consumers bound"
        if not self._connected:
            return False, "not connected to NATS"
        return True, f"ready: {len(self.policies)} consumers bound"

    async def _on_disconnect(self) -> None:
        self._connected = False
        self.metrics.nats_connected.set(0)
        if self._stopping:
            return  # our own close, not an outage
        log.warning("disconnected from NATS")

    async def _on_reconnect(self) -> None:
        self._connected = True
        self.metrics.nats_connected.set(1)
        log.info("reconnected to NATS")

    async def start(self) -> None:
        self._stopping = False
        await self.http.start()
        # First, before NATS: a supervisor that let it pick a free port (0) learns which.
        log.info("http listening", extra={"http_port": self.http.port})
        await self.broker.connect()
        self._connected = True
        self._js = None
        self.metrics.nats_connected.set(1)
        await declare_streams(self.js, streams.ALL, replicas=self.settings.stream_replicas)
        # Listen for give-ups before the first fetch, so none is missed.
        for policy in self.policies.values():
            sub = await self.broker.connection.subscribe(
                f"{_ADVISORY_MAX_DELIVERIES}.{policy.stream}.{policy.durable}",
                queue=f"clm-advisory-{policy.durable}",
                cb=self.deliveries.on_max_deliveries,
            )
            self._advisory_subs.append(sub)
        for fn in self._before_consuming:
            await fn()
        await self.broker.start()
        self.metrics.consumers_bound.set(len(self.policies))
        for fn in self._on_start:
            await fn()
        self._started = True
        log.info(
            "service ready",
            extra={
                "http_port": self.http.port,
                "nats": self.settings.nats_url,
                "consumers": sorted(self.policies),
            },
        )

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` for the life of the service; cancelled first when it stops."""
        task = asyncio.create_task(coro)
        self._background.append(task)
        return task

    async def stop(self) -> None:
        """Stop taking messages, let in-flight handlers finish (up to the grace), close."""
        self._started = False
        self._stopping = True
        for fn in self._on_stop:
            try:
                await fn()
            except Exception as exc:  # - stopping goes on regardless
                log.warning(
                    "stop hook failed",
                    extra={"hook": getattr(fn, "__qualname__", str(fn)), "error": str(exc)},
                )
        for task in self._background:
            task.cancel()
        self._background.clear()
        for sub in self._advisory_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._advisory_subs.clear()
        await self.broker.stop()
        self._connected = False
        self.metrics.nats_connected.set(0)
        await self.http.stop()
        log.info("service stopped")

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop_requested.wait()
            log.info("stop requested, draining in-flight messages")
        finally:
            await self.stop()

    def asyncapi(self) -> AsyncAPI:
        return AsyncAPI(
            self.broker, title=f"clm-{self.name}", version=self.version, description=self.description
        )
