"""The Prometheus metrics every service exposes (clm_ prefix, base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RuntimeMetrics:
    """One set per service process, in its own registry (so tests can run several apps)."""

    def __init__(self, service: str, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge("clm_service_info", "Service name and version.", ["service", "version"], registry=r)
        self.info.labels(service=service, version=version).set(1)
        self.nats_connected = Gauge("clm_nats_connected", "1 while connected to NATS.", registry=r)
        self.consumers_bound = Gauge(
            "clm_consumers_bound", "JetStream consumers this process has bound.", registry=r
        )
        self.handled = Counter(
            "clm_messages_handled_total",
            "Messages taken from JetStream, by consumer and outcome (ack, retry, dead_letter).",
            ["consumer", "outcome"],
            registry=r,
        )
        self.handle_seconds = Histogram(
            "clm_message_handle_seconds",
            "Time spent handling one message.",
            ["consumer"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.dead_letters = Counter(
            "clm_dead_letters_total",
            "Messages moved to a dead-letter subject, by consumer and cause.",
            ["consumer", "cause"],
            registry=r,
        )
        self.published = Counter(
            "clm_messages_published_total", "Messages published, by kind.", ["kind"], registry=r
        )
        self.publish_retries = Counter(
            "clm_publish_retries_total",
            "Publishes tried again because NATS did not take them (restarting, unreachable).",
            ["kind"],
            registry=r,
        )
        self.publish_duplicates = Counter(
            "clm_publish_duplicates_total",
            "Publishes JetStream recognised as duplicates of an earlier Nats-Msg-Id.",
            ["kind"],
            registry=r,
        )
