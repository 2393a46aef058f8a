"""The checkpoint agent's steps: check-cpu, dump, restore, abort, finalize.

One agent per node. A migration's steps arrive one at a time (the coordinator sequences
them); each is idempotent and serialised per migration, and its outcome is stored so a
repeated command answers again without redoing finished work.

The commit point belongs to the coordinator: it comes after a successful restore on the
destination and the network commit. Before it the source can always take the pod back:
a failed dump or transfer rolls back on the source at once (the pod is restored from the
local images into its own network namespace, which removes CRIU's network lock), and
`abort` does the same when the destination fails later. After it, `finalize` removes the
source's frozen copy (the images). The source never runs the pod while the destination
does: the source restores only on its own failure or on abort, and the coordinator sends
abort only before the commit point (after abort on the destination, which deletes any
restored copy there).

Layout on a node (`state_dir` small and durable, `image_dir` large, ideally tmpfs):
  state_dir/migrations/<uid>/results/<step>.json   stored outcomes
  state_dir/migrations/<uid>/pod.json              the pod's containers (source)
  state_dir/migrations/<uid>/dumped                images hold the pod (source)
  state_dir/migrations/<uid>/expected              a transfer is expected (destination)
  state_dir/pods/<pod-uid>/<container>/            bundles of restored containers
  image_dir/out/<uid>/<container>/{criu/,config.json,rootfs.tar}    (source)
  image_dir/in/<uid>/...                                            (destination)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from clm.contracts import CheckpointCommand, CheckpointStep, NodeCapabilities
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent.bundle import config_problems, rebind
from services.checkpoint_agent.container_log import log_path
from services.checkpoint_agent.criu_stats import read_stats
from services.checkpoint_agent.holdback import PacketHold
from services.checkpoint_agent.runc import Container, ContainerRuntime, RuntimeCommandError
from services.checkpoint_agent.transfer import TransferError, send_directory

log = logging.getLogger(__name__)

Details = dict[str, float | int | str | bool]
CapabilityLookup = Callable[[str], Awaitable[NodeCapabilities | None]]


class StepFailed(Exception):
    """A step could not be done; the message says why and what state the pod is in."""


@dataclass
class Outcome:
    ok: bool
    error: str | None = None
    details: Details = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class AgentConfig:
    node: str
    state_dir: Path
    image_dir: Path
    netns_dir: Path = Path("/var/run/netns")
    criu: str = "criu"
    # Shared by every node's agent; None refuses migrations (with that reason).
    secret: bytes | None = None
    # Tests and the sandbox: the namespace standing for this node (None: the host's).
    node_netns: Path | None = None
    # Copy the packets a frozen pod misses and send them again once it runs (holdback.py).
    holdback: bool = True
    # Restore memory through userfaultfd from the received images (runc.Runc.restore).
    lazy_restore: bool = True
    # Restored containers' output: CRI log files named by container id (None: discarded).
    container_log_dir: Path | None = None


class CheckpointAgent:
    def __init__(
        self, config: AgentConfig, runtime: ContainerRuntime, capabilities: CapabilityLookup
    ) -> None:
        self.config = config
        self.node = config.node
        self.runtime = runtime
        self.capabilities = capabilities
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Offered to the transfer server: migration uid -> where its images go.
        self.expected_transfers: dict[str, Path] = {}
        # Source side: packets the frozen pod misses, per migration, and since when.
        self.holds: dict[str, tuple[PacketHold, float]] = {}
        # An agent killed mid-transfer leaves a staging directory: never restorable.
        for partial in (config.image_dir / "in").glob("*.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        for marker in (config.state_dir / "migrations").glob("*/expected"):
            uid = marker.parent.name
            self.expected_transfers[uid] = self._incoming(uid)

    # ----- layout -----

    def _workdir(self, uid: str) -> Path:
        return self.config.state_dir / "migrations" / uid

    def _outgoing(self, uid: str) -> Path:
        return self.config.image_dir / "out" / uid

    def _incoming(self, uid: str) -> Path:
        return self.config.image_dir / "in" / uid

    def _pod_bundles(self, pod_uid: str) -> Path:
        return self.config.state_dir / "pods" / pod_uid

    def _result_path(self, uid: str, step: str) -> Path:
        return self._workdir(uid) / "results" / f"{step}.json"

    def _forget_result(self, uid: str, *steps: str) -> None:
        for step in steps:
            self._result_path(uid, step).unlink(missing_ok=True)

    # ----- entry point -----

    async def execute(self, command: CheckpointCommand) -> Outcome:
        uid = command.migration.uid
        step = CheckpointStep(command.step)
        async with self._locks[uid]:
            stored = self._result_path(uid, step)
            if stored.exists():
                previous = json.loads(stored.read_text())
                if previous["ok"]:
                    details = {**previous["details"], "repeated": True}
                    return Outcome(True, None, details, 0.0)
            started = time.perf_counter()
            handler = {
                CheckpointStep.CHECK_CPU: self.check_cpu,
                CheckpointStep.PRE_DUMP: self.pre_dump,
                CheckpointStep.DUMP: self.dump,
                CheckpointStep.RESTORE: self.restore,
                CheckpointStep.ABORT: self.abort,
                CheckpointStep.FINALIZE: self.finalize,
            }[step]
            try:
                if step is CheckpointStep.DUMP:
                    # Its phases carry their own timeouts: cancelling a running CRIU from
                    # here would leave the pod half-dumped behind a rollback.
                    details = await handler(command)
                else:
                    details = await asyncio.wait_for(handler(command), command.timeout_seconds)
                outcome = Outcome(True, None, details)
            except StepFailed as exc:
                outcome = Outcome(False, str(exc))
            except TimeoutError:
                outcome = Outcome(False, f"{step} did not finish within {command.timeout_seconds:g}s")
            outcome.seconds = time.perf_counter() - started
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(
                json.dumps({"ok": outcome.ok, "error": outcome.error, "details": outcome.details})
            )
            return outcome

    # ----- destination: check-cpu -----

    async def check_cpu(self, command: CheckpointCommand) -> Details:
        """Before any freeze: can this node run what the source's CPU runs? Also announces
        that this node expects the migration's images."""
        self._require_destination(command)
        self._require_secret()
        source = await self.capabilities(command.source_node)
        if source is None:
            raise StepFailed(
                f"no capabilities known for source node {command.source_node}: is its agent running?"
            )
        mine = await self.capabilities(self.node)
        if mine is not None and mine.arch != source.arch:
            raise StepFailed(
                f"architecture differs: {command.source_node} is {source.arch}, {self.node} is {mine.arch}"
            )
        if not source.cpuinfo_image_b64:
            raise StepFailed(
                f"{command.source_node} published no CPU description (criu cpuinfo dump failed there)"
            )
        with tempfile.TemporaryDirectory(prefix="clm-cpuinfo-") as tmp:
            Path(tmp, "cpuinfo.img").write_bytes(base64.b64decode(source.cpuinfo_image_b64))
            code, out = await _run(self.config.criu, "cpuinfo", "check", "-D", tmp)
        if code != 0:
            lines = [line for line in out.splitlines() if "Error" in line or "mismatch" in line.lower()]
            raise StepFailed(
                f"this node's CPU cannot run what {command.source_node} runs (criu cpuinfo check): "
                + ("; ".join(lines[-3:]) or out.strip()[-300:])
            )
        uid = command.migration.uid
        self._workdir(uid).mkdir(parents=True, exist_ok=True)
        (self._workdir(uid) / "expected").write_text(command.source_node)
        self.expected_transfers[uid] = self._incoming(uid)
        return {"source_arch": source.arch}

    # ----- source: pre-dump -----

    async def pre_dump(self, command: CheckpointCommand) -> Details:
        mine = await self.capabilities(self.node)
        if mine is None or not mine.dirty_memory_tracking:
            raise StepFailed(
                f"pre-dump needs dirty-memory tracking, which {self.node} does not have "
                "(criu check --feature mem_dirty_track); migrate with stop-and-copy or post-copy"
            )
        raise StepFailed("pre-copy rounds are not implemented by this agent version; use stop-and-copy")

    # ----- source: dump -----

    async def dump(self, command: CheckpointCommand) -> Details:
        """Lock the network, freeze, dump every container of the pod, stream the images to
        the destination. On failure the pod runs again here before this step answers."""
        self._require_source(command)
        secret = self._require_secret()
        uid = command.migration.uid
        workdir, outgoing = self._workdir(uid), self._outgoing(uid)
        if not (workdir / "dumped").exists():
            containers = await asyncio.to_thread(self.runtime.pod_containers, command.pod.uid)
            if not containers:
                raise StepFailed(
                    f"pod {command.pod.namespace}/{command.pod.name} (uid {command.pod.uid}) has no "
                    f"containers on {self.node}"
                )
            await self._refuse_unmovable(containers)
            address = await self._transfer_address(command.destination_node)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "pod.json").write_text(json.dumps([_container_record(c) for c in containers]))
            shutil.rmtree(outgoing, ignore_errors=True)
            self._start_hold(uid, containers)
            try:
                dump_details = await self._freeze_and_dump(command, containers, outgoing)
            except StepFailed:
                await self._replay(uid)
                raise
            (workdir / "dumped").write_text(json.dumps(dump_details))
        else:
            # A repeated dump after the images were made (e.g. the agent restarted during
            # the transfer): send the same images again.
            dump_details = json.loads((workdir / "dumped").read_text())
            address = await self._transfer_address(command.destination_node)
        host, port = address.rsplit(":", 1)
        try:
            sent = await send_directory(
                host.strip("[]"),
                int(port),
                outgoing,
                migration=uid,
                secret=secret,
                timeout=command.timeout_seconds,
            )
        except (TransferError, OSError, TimeoutError) as exc:
            reason = f"sending the images to {command.destination_node} failed: {exc}"
            raise StepFailed(reason + await self._rollback_note(command)) from None
        return {
            **dump_details,
            "bytes": sent.bytes,
            "files": sent.files,
            "transfer_seconds": round(sent.seconds, 6),
            "transfer_mib_per_s": round(sent.mib_per_s, 1),
        }

    def _start_hold(self, uid: str, containers: list[Container]) -> None:
        if not self.config.holdback or uid in self.holds:
            return
        config = json.loads((containers[0].bundle / "config.json").read_text())
        netns = next((n.get("path") for n in config["linux"]["namespaces"] if n["type"] == "network"), None)
        if not netns:
            return
        try:
            self.holds[uid] = (PacketHold(Path(netns)).start(), time.monotonic())
        except OSError as exc:
            # Only an optimisation: the peers' own retransmissions still get through.
            log.warning("cannot copy the pod's packets during the freeze", extra={"error": str(exc)})

    async def _replay(self, uid: str) -> int:
        held = self.holds.pop(uid, None)
        if held is None:
            return 0
        hold, since = held
        return await asyncio.to_thread(hold.replay, since=since, from_netns=self.config.node_netns)

    async def _refuse_unmovable(self, containers: list[Container]) -> None:
        problems = []
        for container in containers:
            config = json.loads((container.bundle / "config.json").read_text())
            problems += [f"container {container.name}: {p}" for p in config_problems(config)]
            if container.status not in ("running", "paused"):
                problems.append(f"container {container.name} is {container.status}, not running")
        if problems:
            raise StepFailed("refused before freezing anything: " + "; ".join(problems))

    async def _transfer_address(self, node: str) -> str:
        caps = await self.capabilities(node)
        if caps is None or not caps.transfer_address:
            raise StepFailed(
                f"destination {node} has not published where its agent receives images "
                "(NodeCapabilities.transfer_address): is its checkpoint agent running?"
            )
        return caps.transfer_address

    async def _freeze_and_dump(
        self, command: CheckpointCommand, containers: list[Container], outgoing: Path
    ) -> Details:
        started = time.perf_counter()

        def dump_one(container: Container) -> None:
            target = outgoing / container.name
            self.runtime.checkpoint(container.id, target / "criu", tcp_established=True)

        # All containers of the pod together: each CRIU freezes its own container.
        results = await asyncio.gather(
            *(asyncio.to_thread(dump_one, c) for c in containers), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            note = await self._rollback_containers(command, containers)
            raise StepFailed(f"checkpoint failed: {failures[0]}{note}")
        dump_seconds = time.perf_counter() - started
        for container in containers:
            target = outgoing / container.name
            shutil.copy(container.bundle / "config.json", target / "config.json")
            (target / "container.json").write_text(json.dumps(_container_record(container)))
            await _run(
                "tar",
                "-C",
                str(container.bundle / "rootfs"),
                "--one-file-system",
                "-cf",
                str(target / "rootfs.tar"),
                ".",
            )
        stats = [read_stats(outgoing / c.name / "criu" / "stats-dump") for c in containers]
        details: Details = {
            "containers": len(containers),
            "dump_seconds": round(dump_seconds, 6),
            "package_seconds": round(time.perf_counter() - started - dump_seconds, 6),
        }
        for key in ("freezing_seconds", "frozen_seconds", "memdump_seconds", "memwrite_seconds"):
            values = [float(s[key]) for s in stats if key in s]
            if values:
                details[key] = max(values)
        details["pages_written"] = sum(int(s.get("pages_written", 0)) for s in stats)
        return details

    # ----- destination: restore -----

    async def restore(self, command: CheckpointCommand) -> Details:
        self._require_destination(command)
        uid, pod_uid = command.migration.uid, command.pod.uid
        incoming = self._incoming(uid)
        if not incoming.is_dir():
            raise StepFailed(f"no complete image of the pod has arrived from {command.source_node}")
        netns = pod_netns_path(self.node, pod_uid, self.config.netns_dir)
        if not netns.exists():
            raise StepFailed(
                f"the pod's network namespace {netns} is not prepared on {self.node} "
                "(the IP-handover agent's prepare step)"
            )
        # No more transfers for this migration: what is restored is what arrived.
        self.expected_transfers.pop(uid, None)
        started = time.perf_counter()
        restored: list[str] = []
        phases: dict[str, float] = {}
        try:
            for package in sorted(p for p in incoming.iterdir() if p.is_dir()):
                restored.append(await self._restore_container(package, pod_uid, netns, phases))
        except (RuntimeCommandError, OSError, KeyError, ValueError) as exc:
            await asyncio.to_thread(self._remove_restored, pod_uid)
            self.expected_transfers[uid] = incoming
            raise StepFailed(f"restore on {self.node} failed, nothing left running here: {exc}") from None
        seconds = time.perf_counter() - started
        stats = read_stats(next(iter(sorted(incoming.glob("*/criu/stats-restore"))), incoming / "-"))
        shutil.rmtree(incoming, ignore_errors=True)
        (self._workdir(uid) / "expected").unlink(missing_ok=True)
        details: Details = {"containers": len(restored), "restore_seconds": round(seconds, 6)}
        details.update({k: round(v, 6) for k, v in phases.items()})
        details.update({k: v for k, v in stats.items() if k in ("forking_seconds", "pages_restored")})
        return details

    async def _restore_container(
        self, package: Path, pod_uid: str, netns: Path, phases: dict[str, float]
    ) -> str:
        """Unpack one container's package into a bundle and restore it; `phases` adds up
        the time spent unpacking and in the runtime's restore."""
        unpacking = time.perf_counter()
        config = json.loads((package / "config.json").read_text())
        name = package.name
        container_id = json.loads((package / "container.json").read_text())["id"]
        bundle = self._pod_bundles(pod_uid) / name
        shutil.rmtree(bundle, ignore_errors=True)
        (bundle / "rootfs").mkdir(parents=True)
        code, out = await _run("tar", "-C", str(bundle / "rootfs"), "-xf", str(package / "rootfs.tar"))
        if code != 0:
            raise OSError(f"unpacking the root filesystem of {name} failed: {out.strip()[-300:]}")
        cgroups = f"/clm/{self.node}/{container_id}"
        (bundle / "config.json").write_text(json.dumps(rebind(config, netns=netns, cgroups_path=cgroups)))
        await asyncio.to_thread(self.runtime.delete, container_id)  # a leftover of an earlier try
        restoring = time.perf_counter()
        phases["unpack_seconds"] = phases.get("unpack_seconds", 0.0) + restoring - unpacking
        await asyncio.to_thread(
            self.runtime.restore,
            container_id,
            bundle,
            package / "criu",
            tcp_established=True,
            lazy=self.config.lazy_restore,
            output=self._output(container_id),
        )
        phases["runtime_restore_seconds"] = (
            phases.get("runtime_restore_seconds", 0.0) + time.perf_counter() - restoring
        )
        state = await asyncio.to_thread(self.runtime.state, container_id)
        if state != "running":
            raise RuntimeCommandError(f"container {name} is {state or 'gone'} right after its restore")
        return container_id

    def _output(self, container_id: str) -> Path | None:
        log_dir = self.config.container_log_dir
        return log_path(log_dir, container_id) if log_dir is not None else None

    def _remove_restored(self, pod_uid: str) -> None:
        for container in self.runtime.pod_containers(pod_uid):
            self.runtime.delete(container.id)
        shutil.rmtree(self._pod_bundles(pod_uid), ignore_errors=True)

    # ----- either side: abort -----

    async def abort(self, command: CheckpointCommand) -> Details:
        uid = command.migration.uid
        workdir = self._workdir(uid)
        if command.node == command.source_node:
            if self._result_path(uid, CheckpointStep.FINALIZE).exists():
                raise StepFailed("the migration was finalized (past its commit point): nothing to abort")
            if (workdir / "dumped").exists():
                pod = json.loads((workdir / "pod.json").read_text())
                await self._restore_source(command, pod)
                self._forget_result(uid, CheckpointStep.DUMP)
                return {"rolled_back": True}
            return {"rolled_back": False}
        await asyncio.to_thread(self._remove_restored, command.pod.uid)
        self.expected_transfers.pop(uid, None)
        shutil.rmtree(self._incoming(uid), ignore_errors=True)
        (workdir / "expected").unlink(missing_ok=True)
        self._forget_result(uid, CheckpointStep.RESTORE, CheckpointStep.CHECK_CPU)
        return {"removed": True}

    async def _rollback_note(self, command: CheckpointCommand) -> str:
        """Roll back a dump on the source; the text to add to the step's error."""
        workdir = self._workdir(command.migration.uid)
        if not (workdir / "dumped").exists():
            return f"; the pod was not frozen and keeps running on {self.node}"
        try:
            await self._restore_source(command, json.loads((workdir / "pod.json").read_text()))
        except StepFailed as exc:
            return f"; ROLLBACK FAILED: {exc}"
        return f"; rolled back: the pod runs again on {self.node} with its connections"

    async def _rollback_containers(self, command: CheckpointCommand, containers: list[Container]) -> str:
        records = [_container_record(c) for c in containers]
        try:
            await self._restore_source(command, records)
        except StepFailed as exc:
            return f"; ROLLBACK FAILED: {exc}"
        return f"; rolled back: the pod runs again on {self.node}"

    async def _restore_source(self, command: CheckpointCommand, pod: list[dict]) -> None:
        """Bring the pod back on the source from its local images, into its own network
        namespace (CRIU's restore lifts the network lock)."""
        uid = command.migration.uid
        outgoing = self._outgoing(uid)
        errors = []
        for record in pod:
            state = await asyncio.to_thread(self.runtime.state, record["id"])
            if state in ("running", "paused"):
                continue
            images = outgoing / record["name"] / "criu"
            if not (images / "inventory.img").exists():
                errors.append(f"container {record['name']}: no image to restore from")
                continue
            try:
                await asyncio.to_thread(
                    self.runtime.restore,
                    record["id"],
                    Path(record["bundle"]),
                    images,
                    tcp_established=True,
                    output=self._output(record["id"]),
                )
            except RuntimeCommandError as exc:
                errors.append(str(exc))
        if errors:
            raise StepFailed("; ".join(errors))
        await self._replay(uid)
        (self._workdir(uid) / "dumped").unlink(missing_ok=True)
        shutil.rmtree(outgoing, ignore_errors=True)

    # ----- source: finalize -----

    async def finalize(self, command: CheckpointCommand) -> Details:
        self._require_source(command)
        uid = command.migration.uid
        workdir = self._workdir(uid)
        if not (workdir / "dumped").exists():
            raise StepFailed("nothing was dumped for this migration on this node: refusing to finalize")
        for record in json.loads((workdir / "pod.json").read_text()):
            await asyncio.to_thread(self.runtime.delete, record["id"])
        replayed = await self._replay(uid)
        freed = _tree_size(self._outgoing(uid))
        shutil.rmtree(self._outgoing(uid), ignore_errors=True)
        (workdir / "dumped").unlink()
        return {"freed_bytes": freed, "replayed_packets": replayed}

    # ----- checks -----

    def _require_source(self, command: CheckpointCommand) -> None:
        if command.node != command.source_node:
            raise StepFailed(f"{command.step} is a source-node step, but {self.node} is not the source")

    def _require_destination(self, command: CheckpointCommand) -> None:
        if command.node != command.destination_node:
            raise StepFailed(
                f"{command.step} is a destination-node step, but {self.node} is not the destination"
            )

    def _require_secret(self) -> bytes:
        if not self.config.secret:
            raise StepFailed(
                "no agent transfer secret is configured on this node: set CLM_TRANSFER_SECRET_FILE "
                "(the same secret on every node)"
            )
        return self.config.secret


def _container_record(container: Container) -> dict:
    return {"id": container.id, "name": container.name, "bundle": str(container.bundle)}


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


async def _run(*argv: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")
