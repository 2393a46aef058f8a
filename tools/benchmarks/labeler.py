"""tools/bench labeler: the labeler's first full assessment of a 150,000-pod cluster.

A real labeler process (the PEX under Pants, else the module) against the Kubernetes API
emulator (its own process, seeded with 5,000 nodes x 30 pods that carry no CLM label yet)
and a real NATS server. Measured from the labeler's start: its caches filled (one list per
kind), and every pod patched (the label on the eligible ones, the reasons on the others),
each change also published on NATS. Then the same with two replicas sharing the pods, and
a restart over the labeled cluster, which must patch nothing.
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.kit.agents import AgentProcess, built_pex
from tests.kit.cluster_objects import dense_cluster_objects, eligible_count
from tests.kit.nats_server import NatsServer
from tools.benchmarks.kube_emulator import EmulatorProcess
from tools.kube_emulator.main import kubeconfig_text


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("clm_labeler_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _pod_patches(metrics: dict[str, float]) -> float:
    pods = (v for k, v in metrics.items() if k.startswith("clm_labeler_patches_total{") and 'kind="pod"' in k)
    return sum(pods)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak
            return int(line.split()[1]) / 1024
    return 0.0


class Run:
    def __init__(self, tmp: Path, nats: NatsServer, kubeconfig: Path) -> None:
        self.tmp, self.nats, self.kubeconfig = tmp, nats, kubeconfig

    def labelers(self, shards: int, tag: str) -> list[AgentProcess]:
        return [
            AgentProcess(
                "labeler",
                "-",
                pex=built_pex("labeler"),
                log_path=self.tmp / f"labeler-{tag}-{s}.log",
                env={
                    "CLM_NATS_URL": self.nats.url,
                    "CLM_KUBECONFIG": str(self.kubeconfig),
                    "CLM_SHARD": str(s),
                    "CLM_SHARDS": str(shards),
                    "CLM_LOG_LEVEL": "WARNING",
                },
            ).start()
            for s in range(shards)
        ]

    def measure(self, *, shards: int, tag: str, expect_patches: int, pods: int) -> dict[str, Any]:
        started = time.perf_counter()
        procs = self.labelers(shards, tag)
        try:
            for proc in procs:
                proc.wait_ready(timeout=300)
            ready = time.perf_counter() - started
            synced_at = patched_at = None
            deadline = time.monotonic() + (120 if pods < 10_000 else 1800)
            last_patches = -1.0
            while time.monotonic() < deadline:
                metrics = [_metrics(p.port) for p in procs]
                if synced_at is None and all(m.get("clm_labeler_caches_synced") == 1 for m in metrics):
                    synced_at = time.perf_counter() - started
                patches = sum(_pod_patches(m) for m in metrics)
                assessed = sum(m.get("clm_labeler_pods_assessed_total", 0) for m in metrics)
                if patches >= expect_patches and assessed >= pods and patched_at is None:
                    patched_at = time.perf_counter() - started
                    if expect_patches:
                        break
                if patched_at is not None and not expect_patches:
                    time.sleep(2)  # a restart: make sure nothing is written after assessing
                    patches = sum(_pod_patches(_metrics(p.port)) for p in procs)
                    break
                last_patches = patches
                time.sleep(0.2)
            if patched_at is None:
                raise RuntimeError(f"labeler ({tag}) did not finish: {last_patches}/{expect_patches} patches")
            return {
                "run": tag,
                "replicas": shards,
                "pods": pods,
                "ready_s": round(ready, 2),
                "caches_synced_s": round(synced_at or 0, 2),
                "all_assessed_s": round(patched_at, 2),
                "pod_patches": int(patches),
                "patches_per_s": round(patches / max(patched_at - (synced_at or 0), 1e-9)) if patches else 0,
                "peak_rss_mib": round(max(_rss_mib(p.proc.pid) for p in procs if p.proc), 1),
            }
        finally:
            for proc in procs:
                proc.stop()


def run(*, quick: bool = False) -> list[tuple[str, list[dict[str, Any]]]]:
    nodes = 100 if quick else 5_000
    objects = dense_cluster_objects(nodes, labeled=False)
    pods = sum(1 for o in objects if o["kind"] == "Pod")
    eligible = eligible_count(objects)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clm-bench-labeler-") as tmp_name, NatsServer() as nats:
        tmp = Path(tmp_name)
        state = tmp / "cluster.json"
        for shards, tag in ((1, "first assessment"), (2, "first assessment, 2 shards")):
            state.write_bytes(orjson.dumps({"resourceVersion": 10, "objects": objects}))
            emulator = EmulatorProcess(state)
            kubeconfig = tmp / "kubeconfig"
            kubeconfig.write_text(kubeconfig_text(emulator.url))
            try:
                r = Run(tmp, nats, kubeconfig)
                rows.append(r.measure(shards=shards, tag=tag, expect_patches=pods, pods=pods))
                if shards == 1:
                    rows.append(r.measure(shards=1, tag="restart (all labeled)", expect_patches=0, pods=pods))
            finally:
                emulator.stop()
    for row in rows:
        row["eligible"] = eligible
    return [(f"Labeler: {pods:,} pods on {nodes:,} nodes through the API emulator", rows)]
