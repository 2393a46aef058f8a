"""Each service PEX (built by `pants package`) runs on its own against a real nats-server:
/healthz, /readyz and /metrics answer, the agents do their job, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from clm.contracts import (
    CheckpointCommand,
    NodeCapabilities,
    StepResult,
    decode,
    encode,
    streams,
    subjects,
)
from clm.contracts.examples import examples
from clm.runtime.delivery import H_CAUSE, H_REASON
from tests.integration.support import fetch_from_stream, http_get, pex_path
from tests.kit.agents import http_port_from_log
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread

SERVICES = ["labeler", "evictor-planner", "coordinator", "checkpoint-agent", "ip-handover-agent"]
NODE = "node-a.sandbox"
# The checkpoint agent's state and images (per test process, not the host's /var/lib).
STATE = Path(tempfile.gettempdir()) / f"clm-service-pexes-{os.getpid()}"


class ServiceProcess:
    def __init__(self, service: str, nats_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.service = service
        self.port = 0  # bound by the service itself (CLM_HTTP_PORT=0), read from its log
        STATE.mkdir(parents=True, exist_ok=True)
        self.log = STATE / f"{service}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CLM_NATS_URL": nats_url,
            "CLM_HTTP_HOST": "127.0.0.1",
            "CLM_HTTP_PORT": "0",
            "CLM_NODE_NAME": NODE,
            "CLM_SHUTDOWN_GRACE_SECONDS": "5",
            "CLM_TRANSFER_PORT": "0",
            "CLM_STATE_DIR": str(STATE / "state"),
            "CLM_IMAGE_DIR": str(STATE / "images"),
            "CLM_KUBECONFIG": str(STATE / "kubeconfig"),
            **(extra_env or {}),
        }
        python = shutil.which("python3.11") or "python3"
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks the service.
        with self.log.open("wb") as out:
            argv = [python, str(pex_path(service))]
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.output()[-3000:]
                raise AssertionError(f"{self.service} exited {self.proc.returncode}:\n{tail}")
            self.port = self.port or http_port_from_log(self.log)
            if self.port:
                with contextlib.suppress(OSError):
                    if http_get(self.port, "/readyz")[0] == 200:
                        return
            time.sleep(0.2)
        raise AssertionError(f"{self.service} not ready within {timeout}s:\n{self.output()[-3000:]}")

    def terminate(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.proc.returncode, self.output()


@pytest.fixture
def services(nats_server: NatsServer) -> Iterator[dict[str, ServiceProcess]]:
    # The coordinator needs a Kubernetes API: the emulator, with a kubeconfig for it.
    emulator = EmulatorThread().start()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "kubeconfig").write_text(kubeconfig_text(emulator.url))
    procs = {s: ServiceProcess(s, nats_server.url) for s in SERVICES}
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait()
        emulator.stop()


def test_every_service_pex_is_ready_and_exports_metrics(services: dict[str, ServiceProcess]) -> None:
    for name, proc in services.items():
        assert http_get(proc.port, "/healthz") == (200, "ok\n"), name
        status, body = http_get(proc.port, "/readyz")
        assert status == 200 and body.startswith("ready"), (name, body)
        status, metrics = http_get(proc.port, "/metrics")
        assert status == 200
        assert "clm_nats_connected 1.0" in metrics, name
        assert f'clm_service_info{{service="{name}",version=' in metrics, name
        assert "clm_consumers_bound 1.0" in metrics, name


def test_sigterm_stops_each_service_cleanly(services: dict[str, ServiceProcess]) -> None:
    for name, proc in services.items():
        code, out = proc.terminate()
        assert code == 0, f"{name} exited {code}:\n{out}"
        assert '"msg":"service stopped"' in out, name


async def test_agents_and_consumers_do_their_part(
    nats_server: NatsServer, services: dict[str, ServiceProcess]
) -> None:
    # The checkpoint agent probed real CRIU at start and published its capabilities...
    caps_msgs = await fetch_from_stream(
        nats_server.url, subjects.node_capabilities(NODE), streams.EVENTS.name, 1
    )
    caps = decode(caps_msgs[0].data, NodeCapabilities)
    assert caps.node == NODE and caps.arch in ("amd64", "arm64")
    assert caps.criu_version, caps.problems
    # ...which the labeler consumed.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        metrics = http_get(services["labeler"].port, "/metrics")[1]
        if f'clm_labeler_node_capable{{node="{NODE}"}}' in metrics:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("labeler never recorded the node's capabilities")

    # A command to this node's checkpoint agent is answered with a StepResult: here a dump
    # sent to a node that is not the migration's source, refused with the reason.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        command = next(m for m in examples() if isinstance(m, CheckpointCommand))
        command = command.model_copy(update={"node": NODE})
        await js.publish(command.subject(), encode(command), headers={"Nats-Msg-Id": command.message_id})
        results = await fetch_from_stream(nats_server.url, subjects.ALL_STEP_EVENTS, streams.EVENTS.name, 1)
        result = decode(results[0].data, StepResult)
        assert result.command_id == command.message_id
        assert result.node == NODE and not result.ok
        assert "source-node step" in (result.error or ""), result.error

        # A malformed command lands on the dead-letter subject; the agent keeps running.
        await js.publish(subjects.checkpoint_command(NODE, "dump"), b'{"kind": "CheckpointCommand"}')
        letters = await fetch_from_stream(
            nats_server.url,
            subjects.dead_letter(subjects.durable("checkpoint-agent", NODE)),
            streams.DEAD_LETTERS.name,
            1,
        )
        assert letters[0].headers[H_CAUSE] == "malformed"
        assert "invalid CheckpointCommand" in letters[0].headers[H_REASON]
        assert http_get(services["checkpoint-agent"].port, "/readyz")[0] == 200
        metrics = http_get(services["checkpoint-agent"].port, "/metrics")[1]
        consumer = subjects.durable("checkpoint-agent", NODE)
        assert f'clm_dead_letters_total{{cause="malformed",consumer="{consumer}"}} 1.0' in metrics
    finally:
        await nc.close()
