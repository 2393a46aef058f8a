"""The JetStream streams CLM declares at start-up (idempotently, by every service)."""

from __future__ import annotations

from dataclasses import dataclass

from clm.contracts import subjects


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    # "limits" keeps messages for every consumer until max_age; "workqueue" deletes a message
    # once one consumer acks it, so each command is executed once.
    retention: str
    max_age_seconds: float
    # Window in which a repeated Nats-Msg-Id is stored once.
    duplicate_window_seconds: float
    description: str


EVENTS = StreamSpec(
    name="CLM_EVENTS",
    subjects=(f"{subjects.EVENTS_PREFIX}.>",),
    retention="limits",
    max_age_seconds=7 * 24 * 3600,
    duplicate_window_seconds=120,
    description="Everything CLM reports: migration events, agent step results, node and pod state.",
)

COMMANDS = StreamSpec(
    name="CLM_COMMANDS",
    subjects=(f"{subjects.COMMANDS_PREFIX}.>",),
    retention="workqueue",
    max_age_seconds=24 * 3600,
    duplicate_window_seconds=120,
    description="Commands to the coordinator and to node agents; each is taken by one worker.",
)

DEAD_LETTERS = StreamSpec(
    name="CLM_DEAD_LETTERS",
    subjects=(f"{subjects.DEAD_LETTER_PREFIX}.>",),
    retention="limits",
    max_age_seconds=30 * 24 * 3600,
    duplicate_window_seconds=120,
    description="Messages a consumer could not process, with the reason in their headers.",
)

ALL = (EVENTS, COMMANDS, DEAD_LETTERS)


def stream_for(subject: str) -> StreamSpec:
    for spec in ALL:
        prefix = spec.subjects[0].removesuffix(">")
        if subject.startswith(prefix):
            return spec
    raise ValueError(f"subject {subject!r} belongs to no CLM stream")
