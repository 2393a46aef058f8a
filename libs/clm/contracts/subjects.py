"""NATS subjects, broad to narrow: `clm.<family>.<scope>...<leaf>`.

Kubernetes names may contain dots (node names such as `ip-10-0-1-2.ec2.internal`, pod
names are DNS subdomains) but a dot separates NATS subject tokens. Dots are therefore
written as `~` inside a token; Kubernetes names can never contain `~`, so the mapping is
reversible (see `token` and `untoken`).
"""

from __future__ import annotations

import re

ROOT = "clm"
EVENTS_PREFIX = f"{ROOT}.events"
COMMANDS_PREFIX = f"{ROOT}.cmd"
DEAD_LETTER_PREFIX = f"{ROOT}.dlq"
# Progress while a step runs: plain NATS, in no stream (it is stale within seconds).
PROGRESS_PREFIX = f"{ROOT}.progress"

_FORBIDDEN = re.compile(r"[\s*>~]")


class SubjectError(ValueError):
    """A value cannot be placed in a NATS subject token."""


def token(value: str) -> str:
    """One subject token from a Kubernetes name (dots become `~`)."""
    if not value:
        raise SubjectError("a subject token cannot be empty")
    if _FORBIDDEN.search(value):
        raise SubjectError(
            f"{value!r} cannot be used in a NATS subject: whitespace, '*', '>' and '~' are not"
            " allowed (Kubernetes names never contain them)"
        )
    return value.replace(".", "~")


def durable(*parts: str) -> str:
    """A JetStream durable consumer name from parts (names allow no dots: they become `_`,
    which Kubernetes names never contain)."""
    name = "-".join(parts).replace(".", "_")
    if not name or re.search(r"[\s*>/\\~]", name):
        raise SubjectError(f"{name!r} cannot be a durable consumer name")
    return name


def untoken(value: str) -> str:
    """The Kubernetes name a subject token stands for."""
    return value.replace("~", ".")


def join(*parts: str) -> str:
    return ".".join(parts)


# Events: stream CLM_EVENTS (limits retention).
def migration_event(namespace: str, migration: str, reason: str) -> str:
    return join(EVENTS_PREFIX, "migration", token(namespace), token(migration), reason)


def migration_step(namespace: str, migration: str, agent: str, step: str) -> str:
    return join(EVENTS_PREFIX, "step", token(namespace), token(migration), agent, step)


def migration_progress(namespace: str, migration: str) -> str:
    """Not stored: a subscriber sees the progress of the steps running while it listens."""
    return join(PROGRESS_PREFIX, "migration", token(namespace), token(migration))


def node_capabilities(node: str) -> str:
    return join(EVENTS_PREFIX, "node", token(node), "capabilities")


def node_drained(node: str) -> str:
    return join(EVENTS_PREFIX, "node", token(node), "drained")


def pod_eligibility(namespace: str, pod: str) -> str:
    return join(EVENTS_PREFIX, "pod", token(namespace), token(pod), "eligibility")


# The evictor-planner's plan of each cycle; the stream's last message on it is the current plan.
PLANNER_PLAN = join(EVENTS_PREFIX, "planner", "plan")


# Commands: stream CLM_COMMANDS (work-queue retention: each command is taken once).
def migration_request(namespace: str) -> str:
    return join(COMMANDS_PREFIX, "migration", token(namespace), "request")


def checkpoint_command(node: str, step: str) -> str:
    return join(COMMANDS_PREFIX, "node", token(node), "checkpoint", step)


def network_command(node: str, step: str) -> str:
    return join(COMMANDS_PREFIX, "node", token(node), "network", step)


def dead_letter(durable_name: str) -> str:
    return join(DEAD_LETTER_PREFIX, token(durable_name))


# Subscription filters (wildcards), one per consumer kind.
ALL_MIGRATION_EVENTS = join(EVENTS_PREFIX, "migration", ">")
ALL_STEP_EVENTS = join(EVENTS_PREFIX, "step", ">")
ALL_NODE_CAPABILITIES = join(EVENTS_PREFIX, "node", "*", "capabilities")
ALL_NODE_DRAINED = join(EVENTS_PREFIX, "node", "*", "drained")
ALL_POD_ELIGIBILITY = join(EVENTS_PREFIX, "pod", "*", "*", "eligibility")
ALL_MIGRATION_REQUESTS = join(COMMANDS_PREFIX, "migration", "*", "request")
ALL_DEAD_LETTERS = join(DEAD_LETTER_PREFIX, ">")
ALL_MIGRATION_PROGRESS = join(PROGRESS_PREFIX, "migration", ">")


def node_checkpoint_commands(node: str) -> str:
    return join(COMMANDS_PREFIX, "node", token(node), "checkpoint", "*")


def node_network_commands(node: str) -> str:
    return join(COMMANDS_PREFIX, "node", token(node), "network", "*")
