"""Send a command to a node agent over NATS and wait for its StepResult.

The command goes to the CLM_COMMANDS work queue (Nats-Msg-Id = its message_id, so a retry
is stored once); the answer is the StepResult whose command_id is that message_id, taken
from the core subscription on its subject (subscribed before publishing, so it cannot be
missed) — or, for a caller that restarted after sending, from CLM_EVENTS.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

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

        sub = await self.nc.subscribe(subject, cb=on_result)
        try:
            ack = await self.js.publish(
                command.subject(), encode(command), headers={"Nats-Msg-Id": command.message_id}
            )
            if ack.duplicate:
                # Sent before (a restarted coordinator): the agent may have answered already.
                earlier = await self._earlier_result(subject, command.message_id)
                if earlier is not None:
                    return earlier
            return await asyncio.wait_for(answered, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no answer from the {agent} agent on {command.node} to {command.step} within {timeout:g}s"
            ) from None
        finally:
            await sub.unsubscribe()

    async def _earlier_result(self, subject: str, command_id: str) -> StepResult | None:
        found: StepResult | None = None
        psub = await self.js.pull_subscribe(
            subject, stream=streams.EVENTS.name, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        try:
            while True:
                try:
                    msgs = await psub.fetch(batch=100, timeout=0.5)
                except TimeoutError:
                    return found
                for msg in msgs:
                    result = decode(msg.data, StepResult)
                    if result.command_id == command_id:
                        found = result
        finally:
            await psub.unsubscribe()
