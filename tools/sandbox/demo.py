"""The sandbox's demo: a stateful game-server-like pod (a StatefulSet's pod holding MIB of
state, one TCP connection per player), a player on the client host sending requests back to
back on one connection, and an auto-mover that migrates the pod to the next node every N
seconds — shown live: each migration event as it arrives, a row per finished move, and a
summary (moves done, the player's largest gap, connections dropped)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts.protocol import Phase
from clm.policy import names
from tests.kit import builders as b
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.podlab import expected_hash
from tests.kit.workloads import counting_client, stateful_server
from tools.console.events import render, stream_events
from tools.console.migrations import create_migration, follow, migration_body

NAMESPACE = "demo"
STATEFULSET = "game"
POD = "game-0"
PORT = 7000


def deploy(
    api: client.ApiClient, node: str, state_mib: int, *, statefulset: str = STATEFULSET, pod: str = POD
) -> None:
    """The StatefulSet object and its pod bound to `node` (the emulator has no StatefulSet
    controller: the sandbox plays it)."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    template = {"metadata": {"labels": {"app": statefulset}}, "spec": {"containers": [_server(state_mib)]}}
    client.AppsV1Api(api).create_namespaced_stateful_set(
        NAMESPACE,
        {
            "metadata": {"name": statefulset},
            "spec": {
                "replicas": 1,
                "serviceName": statefulset,
                "selector": {"matchLabels": {"app": statefulset}},
                "template": template,
            },
        },
    )
    create_pod(api, node, state_mib, statefulset=statefulset, pod=pod)


def create_pod(
    api: client.ApiClient, node: str, state_mib: int, *, statefulset: str = STATEFULSET, pod: str = POD
) -> None:
    """The StatefulSet's pod, fresh, bound to `node`: what its controller makes (the sandbox
    plays the controller)."""
    client.CoreV1Api(api).create_namespaced_pod(
        NAMESPACE,
        {
            "metadata": {
                "name": pod,
                "labels": {"app": statefulset},
                "ownerReferences": [b.owner("StatefulSet", statefulset)],
            },
            "spec": {"nodeName": node, "containers": [_server(state_mib)]},
        },
    )


def _server(state_mib: int) -> dict[str, Any]:
    server = Path(stateful_server.__file__).read_text()
    return {
        "name": "server",
        "image": POD_IMAGE,
        "command": ["python3.11", "-u", "-c", server, str(state_mib)],
        "ports": [{"containerPort": PORT}],
        "resources": {"requests": {"cpu": "100m", "memory": f"{state_mib + 64}Mi"}},
    }


def wait_running(api: client.ApiClient, timeout: float = 60, *, name: str = POD) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, NAMESPACE)
        if pod.status.phase == "Failed":
            raise RuntimeError(f"the demo pod failed to start: {pod.status.message}")
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return api.sanitize_for_serialization(pod)
        time.sleep(0.2)
    raise RuntimeError(f"the demo pod was not running within {timeout:.0f}s")


def wait_labeled(api: client.ApiClient, timeout: float = 60) -> bool:
    """The labeler marks the pod eligible (and the nodes, from their agents' probes)."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        labels = core.read_namespaced_pod(POD, NAMESPACE).metadata.labels or {}
        if labels.get(names.MIGRATION_ENABLED) == names.TRUE:
            return True
        time.sleep(0.3)
    return False


@dataclass
class Player:
    """counting_client in the client host's namespace: one connection, never reconnects."""

    client_netns: str
    ip: str
    workdir: Path
    proc: subprocess.Popen | None = None
    # The server served an earlier player: go on from the count it reports.
    resume: bool = False

    def start(self) -> Player:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for f in ("stop", "result.json", "result.json.ready", "result.json.progress"):
            (self.workdir / f).unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{self.client_netns}",
                sys.executable,
                counting_client.__file__,
                self.ip,
                str(PORT),
                str(self.workdir / "stop"),
                str(self.workdir / "result.json"),
                *(["resume"] if self.resume else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "client.err").open("wb"),
        )
        deadline = time.monotonic() + 30
        while not (self.workdir / "result.json.ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the player could not connect to {self.ip}:{PORT}: "
                    + (self.workdir / "client.err").read_text()[-500:]
                )
            time.sleep(0.05)
        return self

    def progress(self) -> dict[str, Any]:
        try:
            return json.loads((self.workdir / "result.json.progress").read_text())
        except (OSError, ValueError):
            return {"answers": 0, "largest_gap": 0.0, "error": None, "in_order": True}

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc is not None
        (self.workdir / "stop").touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {**self.progress(), "error": "the player did not finish (server unreachable)"}
        return json.loads((self.workdir / "result.json").read_text())


@dataclass
class Move:
    name: str
    source: str
    destination: str
    phase: str = Phase.PENDING
    freeze_ms: float = 0.0
    total_s: float = 0.0
    message: str = ""


@dataclass
class AutoMover:
    api: client.ApiClient
    nodes: list[str]
    every: float
    moves: list[Move] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def current_node(self) -> str:
        return self.core.read_namespaced_pod(POD, NAMESPACE).spec.node_name

    def next_node(self, current: str) -> str:
        return self.nodes[(self.nodes.index(current) + 1) % len(self.nodes)]

    def start_move(self) -> Move:
        source = self.current_node()
        move = Move(
            name=f"{POD}-move-{len(self.moves) + 1}", source=source, destination=self.next_node(source)
        )
        body = migration_body(move.name, POD, destination=move.destination, fallback="restore-on-source")
        create_migration(self.custom, NAMESPACE, body)
        self.moves.append(move)
        return move

    async def wait(self, move: Move, timeout: float = 180) -> Move:
        started = time.monotonic()
        status = await asyncio.to_thread(follow, self.custom, NAMESPACE, move.name, timeout=timeout)
        if status is None:
            move.phase, move.message = "TimedOut", f"not finished within {timeout:.0f}s"
            return move
        move.phase = status["phase"]
        move.freeze_ms = float(status.get("freezeSeconds", 0)) * 1000
        move.message = status.get("message", "")
        move.total_s = time.monotonic() - started
        return move


async def run_demo(
    api: client.ApiClient,
    nats_url: str,
    nodes: list[str],
    player: Player,
    *,
    every: float,
    max_moves: int | None,
    state_mib: int,
    stop: asyncio.Event,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Move the pod every `every` seconds until `stop` (or `max_moves` moves); print as it
    goes; return the summary."""
    out = out or sys.stdout  # looked up at call time: callers (and tests) may redirect it
    mover = AutoMover(api, nodes, every)

    def show(event, _raw: bytes) -> None:
        print("  event  " + render(event), file=out, flush=True)

    events = asyncio.create_task(stream_events(nats_url, show, follow=True, stop=stop))
    print(
        f"\nmoving {NAMESPACE}/{POD} to the next node every {every:g}s (Ctrl-C to stop)", file=out, flush=True
    )
    try:
        while not stop.is_set() and (max_moves is None or len(mover.moves) < max_moves):
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
                break
            except TimeoutError:
                pass
            move = mover.start_move()
            print(f"\n{move.name}: {move.source} -> {move.destination}", file=out, flush=True)
            await mover.wait(move)
            p = player.progress()
            print(
                f"  {move.phase}: frozen {move.freeze_ms:.0f} ms, {move.total_s:.1f} s from request to done; "
                f"player: {p['answers']} answers, largest gap so far {p['largest_gap'] * 1000:.0f} ms"
                + (f", ERROR {p['error']}" if p.get("error") else "")
                + (f" — {move.message}" if move.phase != Phase.FINISHED else ""),
                file=out,
                flush=True,
            )
        await asyncio.sleep(1.0)  # the last events reach the display
    finally:
        stop.set()
        await asyncio.gather(events, return_exceptions=True)
    result = await asyncio.to_thread(player.finish)
    finished = [m for m in mover.moves if m.phase == Phase.FINISHED]
    return {
        "moves": len(mover.moves),
        "finished": len(finished),
        "failed": [f"{m.name}: {m.phase} {m.message}" for m in mover.moves if m.phase != Phase.FINISHED],
        "largest_freeze_ms": max((m.freeze_ms for m in finished), default=0.0),
        "largest_client_gap_ms": round(float(result.get("largest_gap", 0.0)) * 1000, 1),
        "answers": result.get("answers", 0),
        "in_order": bool(result.get("in_order")),
        "connections_dropped": 1 if result.get("error") else 0,
        "client_error": result.get("error"),
        # The server's state after every move equals the state replayed here: nothing lost.
        "state_verified": result.get("hash") is not None
        and result["hash"]
        == await asyncio.to_thread(expected_hash, state_mib, int(result.get("answers", 0))),
    }
