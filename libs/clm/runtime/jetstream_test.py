"""The create race between services starting together, against a scripted JetStream API."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from clm.contracts import streams
from clm.runtime.jetstream import declare_streams, stream_config


@dataclass
class RacingJetStream:
    """Stream info says "not found" until someone else's create lands, as in a real race."""

    lose_with: int
    existing: dict[str | None, StreamConfig] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def stream_info(self, name: str) -> SimpleNamespace:
        self.calls.append(f"info {name}")
        if name not in self.existing:
            raise NotFoundError()
        return SimpleNamespace(config=self.existing[name])

    async def add_stream(self, config: StreamConfig) -> None:
        self.calls.append(f"add {config.name}")
        # Another service created it a moment earlier; ours is refused.
        self.existing[config.name] = config
        raise BadRequestError(code=400, err_code=self.lose_with, description="lost the race")

    async def update_stream(self, config: StreamConfig) -> None:
        self.calls.append(f"update {config.name}")
        self.existing[config.name] = config


@pytest.mark.parametrize("err_code", [10058, 10065])
async def test_losing_a_create_race_takes_the_existing_stream(err_code: int) -> None:
    js = RacingJetStream(lose_with=err_code)
    await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context
    assert js.calls == ["info CLM_EVENTS", "add CLM_EVENTS", "info CLM_EVENTS"]


async def test_the_winner_older_settings_are_brought_up_to_date() -> None:
    js = RacingJetStream(lose_with=10065)
    older = stream_config(streams.EVENTS, replicas=1)
    older.max_age = 1.0

    async def add_older(config: StreamConfig) -> None:
        js.calls.append(f"add {config.name}")
        js.existing[config.name] = older
        raise BadRequestError(code=400, err_code=10065, description="lost the race")

    js.add_stream = add_older  # type: ignore[method-assign]  # the fake's behaviour for this case
    await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context
    assert js.calls[-1] == "update CLM_EVENTS"
    assert js.existing["CLM_EVENTS"].max_age == streams.EVENTS.max_age_seconds


async def test_other_refusals_are_not_swallowed() -> None:
    js = RacingJetStream(lose_with=10052)
    with pytest.raises(BadRequestError):
        await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context


async def test_a_stream_that_never_appears_is_reported() -> None:
    js = RacingJetStream(lose_with=10065)

    async def add_elsewhere(config: StreamConfig) -> None:
        raise BadRequestError(code=400, err_code=10065, description="subjects overlap")

    js.add_stream = add_elsewhere  # type: ignore[method-assign]  # the fake's behaviour for this case
    with pytest.raises(RuntimeError, match="nats stream ls"):
        await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context


async def test_an_unanswered_api_request_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clm.runtime.jetstream.asyncio.sleep", _no_wait)
    js = RacingJetStream(lose_with=10065)
    info = js.stream_info
    silent = iter([True, True])

    async def busy_then_answers(name: str) -> SimpleNamespace:
        if next(silent, False):
            js.calls.append(f"timeout {name}")
            raise NatsTimeoutError()
        return await info(name)

    js.stream_info = busy_then_answers  # type: ignore[method-assign]  # the fake's behaviour for this case
    js.existing["CLM_EVENTS"] = stream_config(streams.EVENTS, replicas=1)
    await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context
    assert js.calls == ["timeout CLM_EVENTS", "timeout CLM_EVENTS", "info CLM_EVENTS"]


async def test_a_server_that_never_answers_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clm.runtime.jetstream.asyncio.sleep", _no_wait)
    js = RacingJetStream(lose_with=10065)

    async def never(name: str) -> SimpleNamespace:
        raise NatsTimeoutError()

    js.stream_info = never  # type: ignore[method-assign]  # the fake's behaviour for this case
    with pytest.raises(NatsTimeoutError):
        await declare_streams(js, (streams.EVENTS,), replicas=1)  # type: ignore[arg-type]  # a fake JetStream context


async def _no_wait(_seconds: float) -> None:
    pass
