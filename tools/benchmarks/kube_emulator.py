"""tools/bench kube-emulator: the emulator must not be what the planner and labeler
benchmarks measure. Lists 150,000 pods (one response, and in pages of 500 as kubectl and
informers do) and streams a watch of 10,000 changes made by concurrent writers, against an
emulator in its own process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tools.console.report import percentile
from tools.kube_emulator import main as emulator_main


def _pod(i: int) -> dict[str, Any]:
    node = f"node-{i // 30:05d}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{i:06d}",
            "namespace": f"ns-{i % 50}",
            "uid": f"uid-{i}",
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": f"app-{i % 300}", "live.cast.ai/migration-enabled": "true"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"app-{i % 300}-rs",
                    "uid": "u",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/app:1.2.3",
                    "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "MODE", "value": "prod"}],
                }
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
        },
        "status": {"phase": "Running", "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"},
    }


def _state(pods: int) -> bytes:
    namespaces = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": f"ns-{n}",
                "uid": f"ns-{n}",
                "resourceVersion": "1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "status": {"phase": "Active"},
        }
        for n in range(50)
    ]
    return orjson.dumps({"resourceVersion": 10, "objects": namespaces + [_pod(i) for i in range(pods)]})


class EmulatorProcess:
    def __init__(self, state: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.log = state.with_suffix(".log")
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", emulator_main.__name__, "--port", "0", "--seed-file", str(state)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        self.url = line.split("listening on ", 1)[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _list(session: aiohttp.ClientSession, url: str, limit: int | None) -> tuple[int, int, int, float]:
    """(items, distinct pods among them, bytes, seconds) of a full list, page by page."""
    started = time.perf_counter()
    items = size = 0
    names: set[tuple[str, str]] = set()
    token = None
    while True:
        query = {"limit": str(limit)} if limit else {}
        if token:
            query["continue"] = token
        async with session.get(f"{url}/api/v1/pods", params=query) as resp:
            body = await resp.read()
        size += len(body)
        page = orjson.loads(body)
        items += len(page["items"])
        names.update((p["metadata"]["namespace"], p["metadata"]["name"]) for p in page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return items, len(names), size, time.perf_counter() - started


async def _watch_run(url: str, *, pods: int, changes: int, writers: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        async with session.get(f"{url}/api/v1/pods") as resp:
            rv = orjson.loads(await resp.read())["metadata"]["resourceVersion"]
        sent: dict[str, float] = {}
        latencies: list[float] = []
        seen: set[str] = set()
        got_all = asyncio.Event()

        async def watch() -> None:
            params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "300"}
            async with session.get(f"{url}/api/v1/pods", params=params) as resp:
                async for line in resp.content:
                    event = orjson.loads(line)
                    mark = event["object"]["metadata"].get("annotations", {}).get("bench")
                    if mark in sent:
                        latencies.append(time.perf_counter() - sent[mark])
                        seen.add(mark)
                        if len(seen) >= changes:
                            got_all.set()
                            return

        # Watching from the list's resourceVersion: no change is missed however late it connects.
        watcher = asyncio.create_task(watch())
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(changes):
            queue.put_nowait(i)

        async def writer() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                pod = _pod(i * 7 % pods)
                mark = f"c{i}"
                sent[mark] = time.perf_counter()
                path = (
                    f"{url}/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
                )
                async with session.patch(
                    path,
                    data=orjson.dumps({"metadata": {"annotations": {"bench": mark}}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"PATCH {path} answered {resp.status}: {body[:200]!r}")

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        write_seconds = time.perf_counter() - started
        await asyncio.wait_for(got_all.wait(), 300)
        stream_seconds = time.perf_counter() - started
        watcher.cancel()
    latencies.sort()
    return {
        "changes": changes,
        "changes_seen": len(seen),
        "events_seen": len(latencies),
        "writers": writers,
        "writes_per_s": changes / write_seconds,
        "events_per_s": changes / stream_seconds,
        "p50_change_to_event_ms": percentile(latencies, 50) * 1000,
        "p99_change_to_event_ms": percentile(latencies, 99) * 1000,
    }


def run(*, quick: bool = False) -> list[tuple[str, list[dict[str, Any]]]]:
    pods, changes = (3_000, 500) if quick else (150_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="clm-bench-emulator-") as tmp:
        state = Path(tmp, "state.json")
        state.write_bytes(_state(pods))
        emulator = EmulatorProcess(state)
        try:

            async def lists() -> list[dict[str, Any]]:
                rows = []
                async with aiohttp.ClientSession() as session:
                    # The first list pays one-time costs (each object serialized once, the
                    # sorted index built); later lists are what informers see on a re-list.
                    for when, limit in (("cold", None), ("warm", None), ("warm", 500)):
                        items, distinct, size, seconds = await _list(session, emulator.url, limit)
                        rows.append(
                            {
                                "pods": items,
                                "distinct_pods": distinct,
                                "page_size": limit or "all",
                                "server": when,
                                "mib": size / 2**20,
                                "seconds": seconds,
                                "pods_per_s": items / seconds,
                            }
                        )
                return rows

            list_rows = asyncio.run(lists())
            watch_rows = [asyncio.run(_watch_run(emulator.url, pods=pods, changes=changes, writers=16))]
        finally:
            emulator.stop()
    return [
        ("Emulator: list every pod (HTTP, JSON parsed by the client)", list_rows),
        ("Emulator: watch stream while concurrent writers patch pods", watch_rows),
    ]
