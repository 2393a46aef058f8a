"""Send a command to a node agent over NATS and wait for its StepResult.

The command goes to the CLM_COMMANDS work queue (Nats-Msg-Id = its message_id, so a retry
is stored once); the answer is the StepResult whose command_id is that message_id, taken
from the core subscription on its subject (subscribed before publishing, so it cannot be
missed) — or from CLM_EVENTS, for a caller that restarted after sending or that lost its
connection to NATS meanwhile (an answer published then never reached the subscription).
A command NATS does not take (it is restarting) is sent again until the step's time is up.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    NetworkCommand,
    StepResult,
    decode,
    encode,
    streams,
    subjects,
)

# How often an answer is looked for in CLM_EVENTS after NATS reconnected; how soon a
# command NATS did not take is sent again.
RECHECK_SECONDS = 1.0
PUBLISH_RETRY_SECONDS = 0.5
# One fetch of stored answers may wait this long (a timeout there fails the look, retried).
EARLIER_FETCH_SECONDS = 5.0


class AgentClient:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def send(self, command: CheckpointCommand | NetworkCommand, timeout: float) -> StepResult:
        agent = AgentKind.CHECKPOINT if isinstance(command, CheckpointCommand) else AgentKind.NETWORK
        subject = subjects.migration_step(
            command.migration.namespace, command.migration.name, agent, command.step
        )
        answered: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()

        async def on_result(msg: Msg) -> None:
            try:
                result = decode(msg.data, StepResult)
            except Exception:  # - not ours to judge: skip what does not decode
                return
            if result.command_id == command.message_id and not answered.done():
                answered.set_result(result)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sub = await self.nc.subscribe(subject, cb=on_result)
        reconnects = self.nc.stats["reconnects"]
        try:
            ack = await self._publish(command, deadline)
            if ack.duplicate:
                # Sent before (a restarted coordinator): the agent may have answered already.
                earlier = await self._earlier_result(subject, command.message_id)
                if earlier is not None:
                    return earlier
            while (left := deadline - loop.time()) > 0:
                try:
                    return await asyncio.wait_for(asyncio.shield(answered), min(left, RECHECK_SECONDS))
                except TimeoutError:
                    if self.nc.stats["reconnects"] == reconnects:
                        continue
                # Reconnected since: an answer sent meanwhile missed the subscription, but
                # CLM_EVENTS holds it. Looked for at every recheck from now on, not once: one
                # sent just as the connection came back may be stored after the first look.
                try:
                    earlier = await self._earlier_result(subject, command.message_id)
                except (nats.errors.Error, TimeoutError):
                    continue  # NATS away again: looked for again at the next recheck
                if earlier is not None:
                    return earlier
            raise TimeoutError(
                f"no answer from the {agent} agent on {command.node} to {command.step} within {timeout:g}s"
            )
        finally:
            answered.cancel()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _publish(self, command: CheckpointCommand | NetworkCommand, deadline: float) -> PubAck:
        """Stored once in CLM_COMMANDS (its message id): tried again while NATS is away."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self.js.publish(
                    command.subject(), encode(command), headers={"Nats-Msg-Id": command.message_id}
                )
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                if loop.time() + PUBLISH_RETRY_SECONDS >= deadline:
                    raise TimeoutError(f"cannot send {command.step} to {command.node}: {exc!r}") from None
            await asyncio.sleep(PUBLISH_RETRY_SECONDS)

    async def _earlier_result(self, subject: str, command_id: str) -> StepResult | None:
        """The answer to `command_id` among the step's results stored in CLM_EVENTS: every
        stored one is read (the consumer says how many), however slowly they arrive — a fetch
        that times out is not taken for the end (under load it was, and the answer missed)."""
        found: StepResult | None = None
        psub = await self.js.pull_subscribe(
            subject, stream=streams.EVENTS.name, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        try:
            pending = (await psub.consumer_info()).num_pending or 0
            while pending > 0:
                msgs = await psub.fetch(batch=min(pending, 100), timeout=EARLIER_FETCH_SECONDS)
                pending -= len(msgs)
                for msg in msgs:
                    result = decode(msg.data, StepResult)
                    if result.command_id == command_id:
                        found = result
            return found
        finally:
            await psub.unsubscribe()
