"""tools/bench migrate: what a client sees while its server's pod moves, and how long a move takes.

A stateful TCP server (64 MiB ... 4 GiB of state) runs in a runc container on node A of a
shared segment (network namespaces); a client on another host holds one connection and
sends requests back to back. The pod moves to node B, and the client records the largest
gap between two answers (the client-visible interruption). Side by side, in one run:

- stop-and-copy: CLM's agents over NATS (dump to tmpfs, images streamed agent to agent,
  restore into the prepared namespace, IP handover, held packets sent again);
- post-copy: CLM's agents over NATS, the memory left out of the images and fetched after
  the resume from the source's CRIU page server, through the agents' TLS page relay (the
  risk window: from the resume to the last page);
- naive: what `podman container checkpoint --export` / `restore --import` does — dump to
  local disk, copy the image directory, restore — with the same IP handover.

- containerd: CLM's stop-and-copy between two containerd 2.1 nodes driven over CRI as
  kubelet drives them: the source dumped left frozen, the clone restored by containerd's
  shim through the clm-restore RuntimeClass handler;
- containerd post-copy: the same nodes, the source's memory fetched after the resume by the
  restore handler's lazy-pages daemon through the destination agent's page tunnel.

CLM's stop-and-copy restore is lazy from the received local images; the naive path's is
eager, as podman's. A second table: a move given up after the dump, the pod answering again
on its node — from its images on a runc node, thawed in place on a containerd node.
Writes a PNG plot next to the table (`--plot PATH`, default dist/bench/migrate.png).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from clm.contracts import MigrationStrategy, protocol
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent import main as checkpoint_agent_main
from services.checkpoint_agent.bundle import rebind
from services.checkpoint_agent.runc import Runc
from services.ip_handover_agent import main as ip_handover_agent_main
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tests.kit.agents import NodeAgents, agent_tls_dir, built_pex
from tests.kit.containerd_images import node_images
from tests.kit.migration import Driver, MigrationReport, Move
from tests.kit.nats_server import NatsServer
from tests.kit.podlab import CountingClient, LabPod, remove_pod, start_pod
from tests.kit.segment import ENV as SEGMENT_ENV
from tests.kit.segment import POD_IP, Segment, make_segment
from tools.containerd.lab import ContainerdLab, containerd_lab
from tools.containerd.lab import missing as containerd_missing

# Started as `python -m` by NodeAgents: named here so the benchmark's PEX carries them.
AGENT_MAINS = (checkpoint_agent_main.__name__, ip_handover_agent_main.__name__)

Table = tuple[str, list[dict[str, Any]]]
SIZES_MIB = (64, 256, 1024, 4096)
QUICK_SIZES_MIB = (64, 256)
PLOT_PATH = Path("dist/bench/migrate.png")
# The client waits for the freeze however long it is: the benchmark measures it (in the
# emulated VM a 1 GiB stop-and-copy freezes for minutes, past the client's default minute).
CLIENT_PATIENCE = 1800.0


PATHS = ("stop-and-copy", "post-copy", "naive")


def _require_machine() -> None:
    missing = [t for t in ("runc", "criu", "nsenter", "ip") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        raise SystemExit(
            "tools/bench migrate needs root and runc, criu, iproute2 "
            f"(missing: {missing or 'root'}): run it as root after tools/setup/install-system-deps"
        )
    if (why := containerd_missing()) is not None:
        raise SystemExit(f"tools/bench migrate's containerd rows: {why}")
    # The containerd rows come last: their images are made (or found) before the first
    # measurement, so a missing docker fails the run at once, not after the runc rows.
    try:
        node_images()
    except RuntimeError as exc:
        raise SystemExit(f"tools/bench migrate's containerd rows: {exc}") from None


def _pex_dir() -> Path | None:
    built = built_pex("checkpoint-agent")
    return built.parent if built else None


class Bench:
    def __init__(self, segment: Segment, nats: NatsServer, tmp: Path) -> None:
        self.segment, self.tmp = segment, tmp
        tls = self.tls = agent_tls_dir(tmp / "agent-tls")
        self.images = Path("/dev/shm") / f"clm-bench-{segment.suffix}"
        self.nodes = {
            key: NodeAgents(
                node=f"n{key}{segment.suffix}",
                node_netns=segment.nodes[key].name,
                workdir=tmp / key,
                nats_url=nats.url,
                tls_dir=tls,
                image_dir=self.images,
                pex_dir=_pex_dir(),
            )
            for key in ("a", "b")
        }
        self.nats_url = nats.url

    def start(self, ready_timeout: float = 90) -> None:
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_ready(ready_timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.images, ignore_errors=True)

    def channel(self, size_mib: int) -> dict[str, Any]:
        """The agents' channel alone between the two nodes, moving `size_mib` MiB (a file on
        tmpfs, as the images are): what the post-copy fill is measured against."""
        root = Path("/dev/shm") / f"clm-bench-channel-{self.segment.suffix}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "src").mkdir(parents=True)
        block = os.urandom(1 << 20)
        with (root / "src" / "blob").open("wb") as blob:
            for _ in range(size_mib):
                blob.write(block)
        probe = [sys.executable, "-m", "tools.benchmarks.channel_probe"]
        b_host = "10.214.0.12"
        receiver = subprocess.Popen(
            self.segment.nodes["b"].command(*probe, "receive", str(self.tls), b_host, "0", str(root / "dst")),
            stdout=subprocess.PIPE,
            text=True,
            env=SEGMENT_ENV,
        )
        try:
            assert receiver.stdout is not None
            port = receiver.stdout.readline().split()[1]
            sent = subprocess.run(
                self.segment.nodes["a"].command(
                    *probe, "send", str(self.tls), b_host, port, str(root / "src")
                ),
                capture_output=True,
                text=True,
                env=SEGMENT_ENV,
                check=True,
                timeout=600,
            ).stdout.split()
            receiver.wait(timeout=60)
        finally:
            if receiver.poll() is None:
                receiver.kill()
            shutil.rmtree(root, ignore_errors=True)
        sent_bytes, seconds = int(sent[1]), float(sent[2])
        return {"state_mib": size_mib, "channel_mib_per_s": round(sent_bytes / 2**20 / seconds, 1)}

    def everywhere(self) -> dict[str, tuple[str, Path]]:
        return {n.node: (n.node_netns, n.runc_root) for n in self.nodes.values()}

    def measure(
        self, size_mib: int, path: str, dirty_percent: float = 0.0, pattern: str = "sweep"
    ) -> dict[str, Any]:
        a = self.nodes["a"]
        pod = LabPod(
            namespace="bench",
            name=f"s{size_mib}",
            uid=str(uuid.uuid4()),
            ip=POD_IP,
            state_mib=size_mib,
            dirty_percent=dirty_percent,
            dirty_pattern=pattern,
        )
        start_pod(pod, node=a.node, node_netns=a.node_netns, runc_root=a.runc_root, workdir=self.tmp / "pod")
        client = CountingClient(
            self.segment.nodes["client"].name, pod.ip, self.tmp / "client", patience=CLIENT_PATIENCE
        )
        try:
            time.sleep(1.0)
            started = time.perf_counter()
            details = self._naive(pod) if path == "naive" else asyncio.run(self._agents(pod, path))
            total = time.perf_counter() - started
            time.sleep(1.0)
            result = client.finish()
        finally:
            client.kill()
            remove_pod(pod, nodes=self.everywhere())
        return _row(size_mib, path, result, total, details)

    async def _agents(self, pod: LabPod, strategy: str) -> dict[str, Any]:
        a, b = self.nodes["a"], self.nodes["b"]
        driver = await Driver.connect(self.nats_url)
        try:
            report = await driver.migrate(
                Move(
                    pod=pod.ref,
                    pod_ip=pod.ip,
                    source=a.node,
                    destination=b.node,
                    step_timeout=600,
                    strategy=MigrationStrategy(strategy),
                )
            )
        finally:
            await driver.close()
        if not report.ok:
            raise RuntimeError(f"migration failed: {report.error}")
        return _details(report)

    def _naive(self, pod: LabPod) -> dict[str, float]:
        """checkpoint --export / restore --import: disk, copy, restore; same IP handover."""
        a, b = self.nodes["a"], self.nodes["b"]
        net = PodNet(uid=pod.uid, ip=pod.ip)
        on_a = RoutedBackend(node=a.node, uplink="eth0", node_netns=a.node_netns)
        on_b = RoutedBackend(node=b.node, uplink="eth0", node_netns=b.node_netns)
        disk = Path(tempfile.mkdtemp(prefix="clm-naive-", dir="/var/tmp"))
        try:
            on_b.prepare(net)
            source = Runc(root=a.runc_root)
            container = source.pod_containers(pod.uid)[0]
            t0 = time.perf_counter()
            source.checkpoint(container.id, disk / "export", tcp_established=True)
            t1 = time.perf_counter()
            subprocess.run(["cp", "-r", str(disk / "export"), str(disk / "import")], check=True)
            subprocess.run(["sync"], check=True)
            t2 = time.perf_counter()
            bundle = self.tmp / "naive-bundle" / pod.uid
            shutil.rmtree(bundle, ignore_errors=True)
            (bundle / "rootfs").mkdir(parents=True)
            subprocess.run(
                ["tar", "-C", str(container.bundle / "rootfs"), "-cf", str(bundle / "rootfs.tar"), "."],
                check=True,
            )
            subprocess.run(
                ["tar", "-C", str(bundle / "rootfs"), "-xf", str(bundle / "rootfs.tar")], check=True
            )
            config = json.loads((container.bundle / "config.json").read_text())
            config = rebind(
                config, netns=pod_netns_path(b.node, pod.uid), cgroups_path=f"/clm/{b.node}/{container.id}"
            )
            (bundle / "config.json").write_text(json.dumps(config))
            Runc(root=b.runc_root).restore(container.id, bundle, disk / "import", tcp_established=True)
            t3 = time.perf_counter()
            on_a.withdraw(net)
            on_b.announce(net)
            return {"dump_seconds": t1 - t0, "transfer_seconds": t2 - t1, "restore_seconds": t3 - t2}
        finally:
            shutil.rmtree(disk, ignore_errors=True)

    def measure_rollback(self, size_mib: int) -> dict[str, Any]:
        """A move given up after the dump: the runc node brings the pod back from its images."""
        a = self.nodes["a"]
        pod = LabPod(
            namespace="bench", name=f"r{size_mib}", uid=str(uuid.uuid4()), ip=POD_IP, state_mib=size_mib
        )
        start_pod(pod, node=a.node, node_netns=a.node_netns, runc_root=a.runc_root, workdir=self.tmp / "pod")
        client = CountingClient(
            self.segment.nodes["client"].name, pod.ip, self.tmp / "client", patience=CLIENT_PATIENCE
        )
        try:
            time.sleep(1.0)
            move = Move(
                pod=pod.ref,
                pod_ip=pod.ip,
                source=a.node,
                destination=self.nodes["b"].node,
                step_timeout=600,
                strategy=MigrationStrategy.STOP_AND_COPY,
            )
            seconds = asyncio.run(_dump_then_roll_back(self.nats_url, move))
            time.sleep(1.0)
            result = client.finish()
        finally:
            client.kill()
            remove_pod(pod, nodes=self.everywhere())
        return _rollback_row(size_mib, "runc: restore from images", seconds, result)


async def _dump_then_roll_back(nats_url: str, move: Move) -> float:
    """Dump the pod, then roll the move back; the rollback steps' seconds."""
    driver = await Driver.connect(nats_url)
    try:
        for step in (protocol.PREPARE_NETWORK, protocol.CHECK_CPU, protocol.DUMP):
            result = await driver.send(driver.command(move, step), 600)
            if not result.ok:
                raise RuntimeError(f"{step.name} failed: {result.error}")
        started = time.perf_counter()
        for step in protocol.ROLLBACK:
            result = await driver.send(driver.command(move, step), 600)
            if not result.ok:
                raise RuntimeError(f"rollback {step.name} failed: {result.error}")
        return time.perf_counter() - started
    finally:
        await driver.close()


def _rollback_row(size_mib: int, path: str, seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "state_mib": size_mib,
        "rollback": path,
        "rollback_s": round(seconds, 3),
        "interruption_s": round(result["largest_gap"], 3),
        "connection_kept": result["error"] is None and result["in_order"],
    }


CONTAINERD_PATHS = {
    "containerd": MigrationStrategy.STOP_AND_COPY,
    "containerd post-copy": MigrationStrategy.POST_COPY,
}


def _containerd_rows(lab: ContainerdLab, size_mib: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The moves between two containerd nodes (over CRI), one per strategy, and a rollback
    there (a thaw)."""
    moves, rollback = [], {}
    for kind in (*CONTAINERD_PATHS, "rollback"):
        name = f"{'p' if 'post' in kind else kind[0]}{size_mib}"
        source, running = lab.start_server(name, state_mib=size_mib)
        client = CountingClient(
            lab.segment.nodes["client"].name, POD_IP, lab.tmp / "client", patience=CLIENT_PATIENCE
        )
        clone: dict[str, Any] | None = None
        clone_running = None
        try:
            time.sleep(1.0)
            started = time.perf_counter()
            if kind in CONTAINERD_PATHS:
                report, clone, clone_running = asyncio.run(
                    _containerd_move(lab, source, f"{name}-clone-1", CONTAINERD_PATHS[kind])
                )
                details = _details(report)
            else:
                seconds = asyncio.run(_dump_then_roll_back(lab.nats.url, lab.move(source)))
            total = time.perf_counter() - started
            time.sleep(1.0)
            result = client.finish()
        finally:
            client.kill()
            lab.remove("a", source, running)
            if clone is not None:
                lab.remove("b", clone, clone_running)
        if kind in CONTAINERD_PATHS:
            moves.append(_row(size_mib, kind, result, total, details))
        else:
            rollback = _rollback_row(size_mib, "containerd: thaw in place", seconds, result)
    return moves, rollback


async def _containerd_move(
    lab: ContainerdLab, source: dict[str, Any], clone: str, strategy: MigrationStrategy
) -> tuple[Any, Any, Any]:
    driver = await Driver.connect(lab.nats.url)
    try:
        report, clone_pod, running = await lab.migrate(driver, source, clone, strategy)
    finally:
        await driver.close()
    if not report.ok:
        raise RuntimeError(f"migration failed: {report.error}")
    return report, clone_pod, running


def _details(report: MigrationReport) -> dict[str, Any]:
    dump, restore = report.result("checkpoint", "dump"), report.result("checkpoint", "restore")
    assert dump is not None and restore is not None
    fill = report.result("checkpoint", "fill")
    details: dict[str, Any] = {
        "dump_seconds": float(dump.details["dump_seconds"]),
        "transfer_seconds": float(dump.details["transfer_seconds"]),
        "restore_seconds": float(restore.details["restore_seconds"]),
        "risk_window_seconds": float(fill.details["risk_window_seconds"]) if fill else 0.0,
        "pages_mib": round(int(fill.details.get("pages_bytes", 0)) / 2**20, 1) if fill else 0.0,
        "package_seconds": float(dump.details.get("package_seconds", 0.0)),
        # The pages that travelled while the dump still ran (stop-and-copy, pre-copy).
        "sent_during_dump_mib": round(int(dump.details.get("bytes_sent_during_dump", 0)) / 2**20, 1),
    }
    if report.rounds:  # pre-copy: the rounds before the freeze, and the final dump's share
        details["rounds"] = len(report.rounds)
        details["round_pages"] = "/".join(str(r.details.get("pages_written", 0)) for r in report.rounds)
        # What the agent counted the pod writing while each round was copied.
        details["round_dirtied"] = "/".join(
            str(r.details.get("pages_dirtied_since", "?")) for r in report.rounds
        )
        details["final_pages"] = int(dump.details.get("pages_written", 0))
        details["strategy"] = str(report.strategy)
        details["verdict"] = report.verdict or ""
    return details


def _row(
    size_mib: int, path: str, result: dict[str, Any], total: float, details: dict[str, Any]
) -> dict[str, Any]:
    pre_copy = ("rounds", "round_pages", "round_dirtied", "final_pages", "strategy", "verdict")
    extra: dict[str, Any] = {k: details[k] for k in pre_copy if k in details}
    return {
        "state_mib": size_mib,
        "path": path,
        "interruption_s": round(result["largest_gap"], 3),
        "stalled_s": stalled_seconds(result.get("gaps") or []),
        "total_s": round(total, 3),
        "freeze_dump_s": details.get("dump_seconds", 0.0),
        "transfer_s": details.get("transfer_seconds", 0.0),
        "restore_s": details.get("restore_seconds", 0.0),
        "package_s": details.get("package_seconds", 0.0),
        "sent_during_dump_mib": details.get("sent_during_dump_mib", 0.0),
        "risk_window_s": details.get("risk_window_seconds", 0.0),
        "pages_mib": details.get("pages_mib", 0.0),
        "connection_kept": result["error"] is None and result["in_order"],
        **extra,
    }


def stalled_seconds(gaps: list[list[float]]) -> float:
    """All the time the client waited more than 50 ms for an answer, added up. The largest
    gap alone flatters a path that answers once in the middle of its freeze — CLM's
    destination sends the answer a frozen socket still held as soon as it is restored,
    before the commit lets the client's next request in."""
    return round(sum(gap for _when, gap in gaps), 3)


def _ratios(rows: list[dict[str, Any]], path: str = "stop-and-copy") -> list[dict[str, Any]]:
    """`path` over the naive path, per state size, from rows measured in the same run."""
    out = []
    for size in sorted({r["state_mib"] for r in rows}):
        by_path = {r["path"]: r for r in rows if r["state_mib"] == size}
        if {path, "naive"} <= set(by_path):
            clm, naive = by_path[path], by_path["naive"]
            out.append(
                {
                    "state_mib": size,
                    "interruption_clm_over_naive": round(clm["interruption_s"] / naive["interruption_s"], 3),
                    "stalled_clm_over_naive": round(clm["stalled_s"] / naive["stalled_s"], 3)
                    if naive["stalled_s"]
                    else None,
                    "total_clm_over_naive": round(clm["total_s"] / naive["total_s"], 3),
                    "goal": "<= 0.5 stalled" if size >= 1024 and path == "stop-and-copy" else "",
                }
            )
    return out


def fill_against_channel(rows: list[dict[str, Any]], channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Post-copy's fill (resume to last page) over the time the agents' channel, measured in
    the same run, needs for the bytes that came after the resume."""
    out = []
    rates = {c["state_mib"]: c["channel_mib_per_s"] for c in channels}
    for row in rows:
        if "post-copy" not in row["path"] or row["state_mib"] not in rates or not row.get("pages_mib"):
            continue
        channel_s = row["pages_mib"] / rates[row["state_mib"]]
        out.append(
            {
                "state_mib": row["state_mib"],
                "path": row["path"],
                "pages_mib": row["pages_mib"],
                "fill_s": row["risk_window_s"],
                "fill_mib_per_s": round(row["pages_mib"] / row["risk_window_s"], 1),
                "channel_mib_per_s": rates[row["state_mib"]],
                "channel_s": round(channel_s, 3),
                "fill_over_channel": round(row["risk_window_s"] / channel_s, 3),
                "goal": "<= 1.5",
            }
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for metric, ax, label in (
        ("interruption_s", axes[0], "client-visible interruption: largest gap (s)"),
        ("stalled_s", axes[1], "client stalled, all gaps > 50 ms (s)"),
        ("total_s", axes[2], "total migration time (s)"),
    ):
        for name, marker in (
            ("stop-and-copy", "o"),
            ("post-copy", "^"),
            ("naive", "s"),
            ("containerd", "D"),
            ("containerd post-copy", "v"),
        ):
            points = sorted((r["state_mib"], r[metric]) for r in rows if r["path"] == name)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pod memory state (MiB)")
        ax.set_ylabel(label)
        ax.grid(visible=True, alpha=0.3)
        ax.legend()
    fig.suptitle("CLM live migration vs dump/copy/restore (one machine, network namespaces)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(*, quick: bool, plot_path: Path = PLOT_PATH) -> list[Table]:
    _require_machine()
    sizes = QUICK_SIZES_MIB if quick else SIZES_MIB
    rows: list[dict[str, Any]] = []
    rollbacks: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    with (
        make_segment() as segment,
        NatsServer() as nats,
        tempfile.TemporaryDirectory(prefix="clm-bench-") as tmp,
    ):
        bench = Bench(segment, nats, Path(tmp))
        try:
            bench.start()
            for size in sizes:
                for path in PATHS:
                    rows.append(bench.measure(size, path))
                rollbacks.append(bench.measure_rollback(size))
                channels.append(bench.channel(size))
        finally:
            bench.stop()
        # The same moves between two containerd nodes driven over CRI (restored by
        # containerd's shim through the clm-restore handler), in the same run.
        # No checkpoint archives kept: their writing would run into the next measurement.
        with containerd_lab(
            segment, nats, Path(tmp) / "containerd", pex_dir=_pex_dir(), checkpoint_archives="never"
        ) as lab:
            for size in sizes:
                moves, rollback = _containerd_rows(lab, size)
                rows.extend(moves)
                rollbacks.append(rollback)
    written = plot(rows, plot_path)
    return [
        ("Live migration: client-visible interruption and total time (seconds)", rows),
        ("Rollback after the dump: the pod answering again on its node (seconds)", rollbacks),
        ("Side by side: CLM stop-and-copy over the naive path (lower is better)", _ratios(rows)),
        ("Side by side: CLM post-copy over the naive path (lower is better)", _ratios(rows, "post-copy")),
        (
            "Side by side: CLM post-copy on containerd nodes over the naive path (lower is better)",
            _ratios(rows, "containerd post-copy"),
        ),
        ("Post-copy's fill against the agents' channel, same run", fill_against_channel(rows, channels)),
        ("Plot", [{"png": str(written)}]),
    ]
