"""Bad input never stops a service and is never lost: every service PEX runs against a real
nats-server, and generated messages (hypothesis) go to every subject a service consumes —
not JSON, not an object, no kind, a kind nobody knows, a kind from a newer version, the
right kind with wrong fields, and large ones. Each lands on its consumer's dead-letter
subject with the reason, is counted, and every service stays ready. Commands to an agent
for a migration or pod it does not know are refused with the reason, and nothing is made."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clm.contracts import (
    REGISTRY,
    CheckpointCommand,
    NetworkCommand,
    StepResult,
    decode,
    encode,
    streams,
    subjects,
)
from clm.contracts.examples import examples
from clm.runtime.delivery import H_CAUSE, H_REASON, H_STREAM, H_STREAM_SEQ
from tests.integration import test_service_pexes as pexes
from tests.integration.support import http_get
from tests.kit.agents import agent_tls_dir
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread

NODE = pexes.NODE


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[NatsServer, dict[str, pexes.ServiceProcess]]]:
    with NatsServer() as server:
        emulator = EmulatorThread().start()
        pexes.STATE.mkdir(parents=True, exist_ok=True)
        (pexes.STATE / "kubeconfig").write_text(kubeconfig_text(emulator.url))
        # The checkpoint agent with its TLS identity: it takes part in migrations, so what it
        # refuses below is refused for what it does not know, not for a missing certificate.
        tls = {"CLM_AGENT_TLS_DIR": str(agent_tls_dir(pexes.STATE / "agent-tls"))}
        procs = {
            s: pexes.ServiceProcess(s, server.url, tls if s == "checkpoint-agent" else None)
            for s in pexes.SERVICES
        }
        try:
            for proc in procs.values():
                proc.wait_ready()
            yield server, procs
        finally:
            for proc in procs.values():
                if proc.proc.poll() is None:
                    proc.proc.kill()
                    proc.proc.wait()
            emulator.stop()


def concrete(filter_subject: str) -> str:
    """A subject the filter matches (tokens for its wildcards)."""
    return ".".join("x" if t == "*" else "x.y" if t == ">" else t for t in filter_subject.split("."))


async def consumer_subjects(url: str) -> dict[str, str]:
    """Every durable consumer the services made: durable -> a subject it takes."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        found = {}
        for stream in (streams.EVENTS.name, streams.COMMANDS.name):
            for info in await js.consumers_info(stream):
                name, filter_subject = info.config.durable_name, info.config.filter_subject
                if name and filter_subject:
                    found[name] = concrete(filter_subject)
        return found
    finally:
        await nc.close()


def _not_a_message(data: bytes) -> bool:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return True
    return not (isinstance(value, dict) and value.get("kind") in REGISTRY)


REAL = [json.loads(encode(m)) for m in examples()]
payloads = st.one_of(
    st.binary(max_size=256).filter(_not_a_message),
    st.lists(st.integers(), max_size=5).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k != "kind"), st.integers(), max_size=4).map(
        lambda v: json.dumps(v).encode()
    ),
    st.text(min_size=1, max_size=30)
    .filter(lambda k: k not in REGISTRY)
    .map(lambda kind: json.dumps({"kind": kind, "schema_version": 1}).encode()),
    # A kind this version knows, from a newer version of it.
    st.sampled_from(REAL).map(lambda m: json.dumps({**m, "schema_version": 99}).encode()),
    # The right kind with a field of the wrong type.
    st.sampled_from(REAL).map(lambda m: json.dumps({**m, "message_id": 12345, "occurred_at": []}).encode()),
)
BIG = json.dumps({"kind": "NodeCapabilities", "schema_version": 1, "padding": "x" * 600_000}).encode()


async def publish_everywhere(url: str, targets: dict[str, str], payload: bytes) -> dict[tuple[str, int], str]:
    """The payload to each consumer's subject; (stream, seq) -> the durable that takes it."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sent = {}
        for durable, subject in targets.items():
            stream = streams.stream_for(subject).name
            ack = await js.publish(
                subject, payload, stream=stream, headers={"Nats-Msg-Id": os.urandom(8).hex()}
            )
            sent[(ack.stream, ack.seq)] = durable
        return sent
    finally:
        await nc.close()


async def dead_letters_for(
    url: str, sent: dict[tuple[str, int], str], timeout: float = 20
) -> dict[tuple[str, int], Any]:
    """The dead letters of the messages sent, by (stream, seq); fails after `timeout`."""
    nc = await nats.connect(url)
    found: dict[tuple[str, int], Any] = {}
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            subjects.ALL_DEAD_LETTERS, stream=streams.DEAD_LETTERS.name, ordered_consumer=True
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while set(sent) - set(found) and loop.time() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.1, deadline - loop.time()))
            except TimeoutError:
                break
            key = (msg.headers[H_STREAM], int(msg.headers[H_STREAM_SEQ]))
            if key in sent:
                found[key] = msg
        return found
    finally:
        await nc.close()


def dead_letter_total(procs: dict[str, pexes.ServiceProcess]) -> float:
    total = 0.0
    for proc in procs.values():
        for line in http_get(proc.port, "/metrics")[1].splitlines():
            if line.startswith("clm_dead_letters_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
@example(payload=BIG)
@example(payload=b"")
def test_bad_messages_go_to_dead_letters_with_the_reason(
    running: tuple[NatsServer, dict[str, pexes.ServiceProcess]], payload: bytes
) -> None:
    server, procs = running
    targets = asyncio.run(consumer_subjects(server.url))
    # The five services' consumers, each a bad message's way in.
    assert len(targets) >= len(pexes.SERVICES), targets
    before = dead_letter_total(procs)
    sent = asyncio.run(publish_everywhere(server.url, targets, payload))
    letters = asyncio.run(dead_letters_for(server.url, sent))
    missing = {sent[k] for k in set(sent) - set(letters)}
    assert not missing, f"no dead letter from {sorted(missing)} for {payload[:80]!r}"
    for msg in letters.values():
        assert msg.headers[H_CAUSE] == "malformed" and msg.headers[H_REASON], msg.headers
        assert msg.data == payload  # kept byte for byte
    # Counted by each service, which keeps serving.
    assert dead_letter_total(procs) >= before + len(sent)
    for name, proc in procs.items():
        assert http_get(proc.port, "/readyz")[0] == 200, name


def test_commands_for_what_an_agent_does_not_know_are_refused_and_touch_nothing(
    running: tuple[NatsServer, dict[str, pexes.ServiceProcess]],
) -> None:
    server, _ = running
    template = next(m for m in examples() if isinstance(m, CheckpointCommand))
    network = next(m for m in examples() if isinstance(m, NetworkCommand))
    stranger = template.migration.model_copy(update={"name": "never-seen", "uid": "uid-never-seen"})
    pod = template.pod.model_copy(update={"uid": "pod-uid-never-seen"})
    base = {
        "migration": stranger,
        "pod": pod,
        "source_node": NODE,
        "destination_node": "elsewhere",
        "node": NODE,
    }
    commands: list[CheckpointCommand | NetworkCommand] = [
        template.model_copy(update={**base, "step": step, "message_id": f"unknown-{step}"})
        for step in ("dump", "finalize")
    ]
    arriving = {**base, "source_node": "elsewhere", "destination_node": NODE}
    commands.append(
        template.model_copy(update={**arriving, "step": "restore", "message_id": "unknown-restore"})
    )
    commands.append(
        network.model_copy(update={**arriving, "step": "commit", "message_id": "unknown-announce"})
    )
    before = sorted(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else []
    results = asyncio.run(answers(server.url, commands))
    reasons = {r.step + (":" + r.agent): r.error or "" for r in results}
    assert all(not r.ok for r in results), [(r.step, r.ok, r.details) for r in results]
    assert "has no containers on" in reasons["dump:checkpoint"]
    assert "nothing was dumped for this migration" in reasons["finalize:checkpoint"]
    assert "no complete image of the pod has arrived" in reasons["restore:checkpoint"]
    assert "was not prepared" in reasons["commit:network"]
    after = sorted(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else []
    assert after == before  # no namespace made for a pod nobody prepared
    assert not list(Path(tempfile.gettempdir()).glob("clm-service-pexes-*/images/*/in/uid-never-seen*"))


async def answers(url: str, commands: list[CheckpointCommand | NetworkCommand]) -> list[StepResult]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.ALL_STEP_EVENTS, stream=streams.EVENTS.name, ordered_consumer=True)
        for command in commands:
            await js.publish(command.subject(), encode(command), headers={"Nats-Msg-Id": command.message_id})
        wanted = {c.message_id for c in commands}
        got: list[StepResult] = []
        while wanted:
            result = decode((await sub.next_msg(timeout=30)).data, StepResult)
            if result.command_id in wanted:
                wanted.discard(result.command_id)
                got.append(result)
        return got
    finally:
        await nc.close()
