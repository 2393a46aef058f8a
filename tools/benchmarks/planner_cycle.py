"""tools/bench planner-cycle: the evictor-planner's end-to-end cycle at 5,000 nodes.

A real planner process (the PEX with CLM_PEX_DIR, else the module) against the Kubernetes
API emulator (its own process, seeded with 5,000 nodes x 30 pods = 150,000 pods, the
Migration CRD) and a real NATS server. A cycle is: snapshot from the informers' caches
(every pod digested by the policy core), the bin-packing plan, the steps through the API
(cordon, Migrations, evictions), the plan published on NATS. Timings come from the
planner's own DrainPlanned events (`cycle_seconds`); the first cycle also pays for the
caches filling (one list per kind).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from clm.contracts import DrainPlanned, decode, streams, subjects
from tests.kit.agents import AgentProcess, built_pex
from tests.kit.cluster_objects import dense_cluster_objects
from tests.kit.nats_server import NatsServer
from tools.benchmarks.kube_emulator import EmulatorProcess
from tools.kube_emulator.main import kubeconfig_text

CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")


async def _plans(url: str, after: float) -> list[DrainPlanned]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subjects.PLANNER_PLAN, durable=None, stream=streams.EVENTS.name)
        out: list[DrainPlanned] = []
        while True:
            try:
                msgs = await sub.fetch(batch=100, timeout=0.5)
            except TimeoutError:
                return out
            for msg in msgs:
                plan = decode(msg.data, DrainPlanned)
                if plan.occurred_at.timestamp() >= after:
                    out.append(plan)
    finally:
        await nc.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _crd() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    crd["metadata"].update(
        uid="uid-crd-migrations", resourceVersion="1", creationTimestamp="2026-01-01T00:00:00Z"
    )
    return crd


def _measure(
    tmp: Path, nats: NatsServer, state: bytes, mode: str, *, dry_run: bool, cycles: int
) -> dict[str, Any]:
    seed = tmp / f"cluster-{mode}-{dry_run}.json"
    seed.write_bytes(state)
    emulator = EmulatorProcess(seed)
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(emulator.url))
    started_wall = time.time()
    started = time.perf_counter()
    planner = AgentProcess(
        "evictor-planner",
        "-",
        pex=built_pex("evictor-planner"),
        log_path=tmp / f"planner-{mode}-{dry_run}.log",
        env={
            "CLM_NATS_URL": nats.url,
            "CLM_KUBECONFIG": str(kubeconfig),
            "CLM_MODE": mode,
            "CLM_DRY_RUN": str(dry_run).lower(),
            "CLM_INTERVAL_SECONDS": "2",
            "CLM_SETTLE_SECONDS": "0.5",
            "CLM_MAX_NODES_DRAINING": "20",
            "CLM_MAX_MIGRATIONS_IN_FLIGHT": "200",
            "CLM_LOG_LEVEL": "WARNING",
        },
    ).start()
    try:
        planner.wait_ready(timeout=300)
        plans: list[DrainPlanned] = []
        deadline = time.monotonic() + 900
        while len(plans) < cycles and time.monotonic() < deadline:
            time.sleep(1)
            plans = asyncio.run(_plans(nats.url, started_wall))
        if not plans:
            raise RuntimeError(f"no plan published; see {planner.log_path}")
        first_at = plans[0].occurred_at.timestamp() - started_wall
        later = [p.cycle_seconds for p in plans[1:]] or [plans[0].cycle_seconds]
        rss = _rss_mib(planner.proc.pid) if planner.proc else 0.0
    finally:
        planner.stop()
        emulator.stop()
    first = plans[0]
    return {
        "mode": mode,
        "dry_run": dry_run,
        "nodes": first.nodes,
        "pods": first.pods,
        "start_to_first_plan_s": round(first_at, 2),
        "first_cycle_s": first.cycle_seconds,
        "next_cycles_median_s": round(statistics.median(later), 3),
        "plan_would_drain": first.nodes_the_plan_would_drain,
        "drains_started": len(first.new_drains),
        "migrations": sum(m.action == "live-migrate" for d in first.new_drains for m in d.moves),
        "evictions": sum(m.action == "evict" for d in first.new_drains for m in d.moves),
        "peak_rss_mib": round(rss, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def run(*, quick: bool = False) -> list[tuple[str, list[dict[str, Any]]]]:
    nodes = 200 if quick else 5_000
    objects = dense_cluster_objects(nodes, labeled=True)
    state = orjson.dumps({"resourceVersion": 10, "objects": [_crd(), *objects]})
    rows = []
    with tempfile.TemporaryDirectory(prefix="clm-bench-planner-") as tmp_name:
        for mode, dry_run in (("default", True), ("default", False), ("aggressive", False)):
            with NatsServer() as nats:
                rows.append(_measure(Path(tmp_name), nats, state, mode, dry_run=dry_run, cycles=4))
    return [(f"Planner cycle end to end: {nodes:,} nodes through the API emulator and NATS", rows)]
