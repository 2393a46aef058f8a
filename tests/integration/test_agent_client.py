"""The coordinator's command channel (clm.runtime.agent_client) across a lost connection to
NATS, with a real nats-server: the coordinator reaches it through a TCP proxy the test cuts,
the agent directly.

- an answer the agent publishes while the coordinator is cut off never reaches its core
  subscription: it is found in CLM_EVENTS once the coordinator is back, long before the
  step's timeout;
- a command NATS cannot take while the coordinator is cut off is sent again when it is
  back, and stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clm.contracts import CheckpointCommand, StepResult, decode, encode, streams
from clm.contracts.examples import examples
from clm.runtime.agent_client import AgentClient
from clm.runtime.jetstream import declare_streams
from tests.kit.nats_server import NatsServer, free_port

STEP_TIMEOUT = 60.0


class CuttableProxy:
    """Forwards TCP to NATS until cut: then every connection through it is dropped and new
    ones refused, until resumed on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def resume(self) -> None:
        await self.start()


@pytest.fixture
async def nats_and_proxy() -> AsyncIterator[tuple[str, CuttableProxy]]:
    with NatsServer() as server:
        proxy = await CuttableProxy(server.port).start()
        try:
            yield server.url, proxy
        finally:
            await proxy.cut()


def dump_command() -> CheckpointCommand:
    command = next(m for m in examples() if isinstance(m, CheckpointCommand))
    return command.model_copy(update={"message_id": f"test-{time.monotonic_ns()}"})


def answer_to(command: CheckpointCommand) -> StepResult:
    result = next(m for m in examples() if isinstance(m, StepResult))
    return result.model_copy(update={"command_id": command.message_id, "step": command.step})


async def coordinator_connection(proxy: CuttableProxy) -> tuple[Client, asyncio.Event, asyncio.Event]:
    lost, back = asyncio.Event(), asyncio.Event()

    async def disconnected() -> None:
        back.clear()
        lost.set()

    async def reconnected() -> None:
        back.set()

    nc = await nats.connect(
        f"nats://127.0.0.1:{proxy.port}",
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )
    return nc, lost, back


async def publish_answer(nc: Client, command: CheckpointCommand) -> None:
    """Stored in CLM_EVENTS, however long a busy server takes to say so (its default 5 s
    ack timeout is not a failure of the answer)."""
    await nc.jetstream().publish(answer_to(command).subject(), encode(answer_to(command)), timeout=30)


async def agent(url: str, on_command: Callable[[Client, Msg], Awaitable[None]]) -> Client:
    nc = await nats.connect(url)
    await declare_streams(nc.jetstream(), streams.ALL, replicas=1)

    async def handle(msg: Msg) -> None:
        await on_command(nc, msg)

    await nc.subscribe(dump_command().subject(), cb=handle)
    # The server has the subscription before the coordinator publishes: SUB is only buffered
    # here, and a command published on the other connection first reached no one (the step
    # then timed out). The real agent reads a durable consumer and has no such window.
    await nc.flush()
    return nc


async def test_an_answer_sent_while_the_coordinator_was_cut_off_is_found(
    nats_and_proxy: tuple[str, CuttableProxy],
) -> None:
    url, proxy = nats_and_proxy
    coordinator, lost, back = await coordinator_connection(proxy)

    cut_once: list[str] = []

    async def answer_while_cut_off(nc: Client, msg: Msg) -> None:
        command = decode(msg.data, CheckpointCommand)
        if cut_once:
            # The command again: the coordinator's publish, cut off before its ack, is tried
            # again, and a plain subscription sees every try (JetStream keeps one). Cutting
            # each time made the two take turns until the step timed out. A real agent's
            # durable consumer gets it once, and answers a repeat with its stored answer.
            await publish_answer(nc, command)
            return
        cut_once.append(command.message_id)
        await proxy.cut()
        try:
            await lost.wait()
            await publish_answer(nc, command)
        finally:
            # Always: a stand-in whose publish failed once left the coordinator cut off for
            # good, and the step timed out (nats-py swallows a callback's exception).
            await proxy.resume()

    worker = await agent(url, answer_while_cut_off)
    try:
        command = dump_command()
        started = time.monotonic()
        result = await AgentClient(coordinator).send(command, STEP_TIMEOUT)
        waited = time.monotonic() - started
        assert back.is_set()
        assert result.ok and result.command_id == command.message_id
        assert waited < 15, f"found only after {waited:.1f}s (the step's timeout is {STEP_TIMEOUT:g}s)"
    finally:
        await worker.close()
        await coordinator.close()


async def test_a_command_nats_did_not_take_is_sent_again_and_stored_once(
    nats_and_proxy: tuple[str, CuttableProxy],
) -> None:
    url, proxy = nats_and_proxy
    coordinator, lost, back = await coordinator_connection(proxy)
    received: list[str] = []

    async def answer(nc: Client, msg: Msg) -> None:
        command = decode(msg.data, CheckpointCommand)
        received.append(command.message_id)
        await publish_answer(nc, command)

    worker = await agent(url, answer)
    try:
        await proxy.cut()
        await lost.wait()
        command = dump_command()
        sending = asyncio.create_task(AgentClient(coordinator).send(command, STEP_TIMEOUT))
        # Longer than a JetStream publish waits for its ack (5 s): the first try fails.
        await asyncio.sleep(7)
        assert not sending.done()
        await proxy.resume()
        result = await asyncio.wait_for(sending, 20)
        assert result.ok and result.command_id == command.message_id
        info = await worker.jetstream().stream_info(streams.COMMANDS.name)
        assert info.state.messages == 1, "the command was stored more than once"
    finally:
        await worker.close()
        await coordinator.close()
