import asyncio
import threading

from clm.contracts import CheckpointCommand, StepProgress
from clm.contracts.examples import examples
from services.checkpoint_agent.progress import ProgressReporter


def a_dump_command() -> CheckpointCommand:
    return next(m for m in examples() if isinstance(m, CheckpointCommand))


async def test_reports_from_a_worker_thread_at_a_bounded_rate_and_always_the_last() -> None:
    heard: list[StepProgress] = []

    async def announce(message: StepProgress) -> None:
        heard.append(message)

    report = ProgressReporter(announce, node="node-a", every_seconds=3600).for_step(
        a_dump_command(), total=300
    )

    def copy() -> None:
        for n in range(0, 301, 10):
            report(n)

    worker = threading.Thread(target=copy)
    worker.start()
    await asyncio.to_thread(worker.join)
    for _ in range(10):
        await asyncio.sleep(0)
    # The first, then nothing within the hour but the last byte.
    assert [m.bytes_done for m in heard] == [0, 300]
    assert heard[-1].bytes_total == 300 and heard[-1].node == "node-a" and heard[-1].step == "dump"


async def test_a_failing_announce_never_fails_the_step() -> None:
    async def announce(message: StepProgress) -> None:
        raise ConnectionError("NATS is restarting")

    report = ProgressReporter(announce, node="node-a").for_step(a_dump_command(), total=10)
    report(10)
    for _ in range(10):
        await asyncio.sleep(0)


def test_without_nats_reports_nothing() -> None:
    report = ProgressReporter(None, node="node-a").for_step(a_dump_command(), total=10)
    report(10)  # no loop needed, nothing sent
