"""The source side of a move: freeze and dump the pod, stream it to the destination, and
either give it back (rollback, before the commit point) or let it go (finalize, after)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path

from clm.contracts import CheckpointCommand, CheckpointStep, MigrationStrategy
from clm.contracts.protocol import StepFailed
from services.checkpoint_agent.bundle import config_problems
from services.checkpoint_agent.config import AgentConfig, CapabilityLookup
from services.checkpoint_agent.criu_stats import images_complete, read_stats
from services.checkpoint_agent.dirty_pages import dirty_pages, resident_anonymous_bytes
from services.checkpoint_agent.holdback import PacketHold
from services.checkpoint_agent.layout import tree_size
from services.checkpoint_agent.lazy_dumps import LazyDumpLost, LazyDumps
from services.checkpoint_agent.outcomes import Details, OutcomeStore
from services.checkpoint_agent.pagemap import PAGE_SIZE, pages_by_kind
from services.checkpoint_agent.progress import ProgressReporter
from services.checkpoint_agent.runtime import Container, ContainerRuntime, RuntimeCommandError
from services.checkpoint_agent.tls import AgentTls
from services.checkpoint_agent.transfer import (
    Channel,
    Growing,
    TransferError,
    TransferStats,
    open_channel,
    sending_size,
)

log = logging.getLogger(__name__)
# What travels while the dump still runs: the first container's memory pages, as CRIU writes
# them (`<container>/criu/pages-<id>.img`).
STREAMED_DURING_DUMP = "*/criu/pages-*.img"


def _dirtied_since(containers: list[Container]) -> int | None:
    """The pages the pod has written since the pre-dump (None: unreadable here)."""
    try:
        return dirty_pages(c.pid for c in containers if c.pid)
    except OSError as exc:
        log.warning("could not read the pod's soft-dirty pages: %s", exc)
        return None


def container_record(container: Container) -> dict[str, str]:
    return {"id": container.id, "name": container.name, "bundle": str(container.bundle)}


class SourceSide:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        capabilities: CapabilityLookup,
        outcomes: OutcomeStore,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.config, self.layout = config, config.layout
        self.progress = progress or ProgressReporter(None, node=config.node)
        self.node = config.node
        self.runtime, self.capabilities, self.outcomes = runtime, capabilities, outcomes
        # Packets the frozen pod misses, per migration, and since when.
        self.holds: dict[str, tuple[PacketHold, float]] = {}
        # Post-copy: where CRIU's page servers serve the dumped pods' memory.
        self.lazy = LazyDumps(self.layout)

    # ----- pre-dump -----

    async def pre_dump(self, command: CheckpointCommand) -> Details:
        """One pre-copy round while the pod runs: each container's memory (after round 1, only
        what it wrote since the round before) dumped beside the final dump's place and
        streamed to the destination. Nothing stays frozen; a failure leaves the pod running."""
        mine = await self.capabilities(self.node)
        if mine is None or not mine.dirty_memory_tracking:
            raise StepFailed(
                f"pre-dump needs dirty-memory tracking, which {self.node} does not have "
                "(criu check --feature mem_dirty_track); migrate with stop-and-copy or post-copy"
            )
        tls = self.config.require_tls()
        uid, number = command.migration.uid, command.round or 1
        done = self._rounds(uid)
        previous = done[-1]["round"] if done else None
        if previous is not None and previous >= number:
            raise StepFailed(f"pre-copy round {number} comes after round {previous}: rounds only go forward")
        containers = await self._movable_containers(command)
        target = self.layout.rounds_out(uid) / str(number)
        shutil.rmtree(target, ignore_errors=True)
        channel = await self._open_channel(command, tls, transfer=f"{uid}/round-{number}")
        started = time.perf_counter()
        try:

            def pre_dump_one(container: Container) -> None:
                images = target / container.name / "criu"
                parent = None
                if previous is not None:
                    parent = os.path.relpath(
                        self.layout.rounds_out(uid) / str(previous) / container.name / "criu", images
                    )
                self.runtime.pre_dump(container.id, images, parent=parent)

            results = await asyncio.gather(
                *(asyncio.to_thread(pre_dump_one, c) for c in containers), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise RuntimeCommandError(str(failures[0]))
            dump_seconds = time.perf_counter() - started
            stall = min(self.config.transfer_stall_seconds, command.timeout_seconds)
            report = self.progress.for_step(command, total=sending_size(target, {}))
            sent = await channel.send(target, stall_seconds=stall, progress=report)
            dirtied = await asyncio.to_thread(_dirtied_since, containers)
            # CRIU clears the bits in the freeze at the dump's start: the writes span the round.
            dirtied_seconds = time.perf_counter() - started
        except (TransferError, OSError, TimeoutError, RuntimeCommandError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise StepFailed(
                f"pre-copy round {number} failed: {exc}; nothing was frozen, the pod runs on {self.node}"
            ) from None
        finally:
            channel.close()
        stats = [read_stats(target / c.name / "criu" / "stats-dump") for c in containers]
        details: Details = {
            "round": number,
            "containers": len(containers),
            "pages_written": sum(int(st.get("pages_written", 0)) for st in stats),
            "pages_scanned": sum(int(st.get("pages_scanned", 0)) for st in stats),
            "bytes": sent.bytes,
            "dump_seconds": round(dump_seconds, 6),
            "transfer_seconds": round(sent.seconds, 6),
            "transfer_mib_per_s": round(sent.mib_per_s, 1),
        }
        frozen = [float(st["frozen_seconds"]) for st in stats if "frozen_seconds" in st]
        if frozen:
            details["frozen_seconds"] = max(frozen)
        if dirtied is not None:
            # What the next round would copy: the pod's writes since this round's copy.
            details["pages_dirtied_since"] = dirtied
            details["dirtied_seconds"] = round(dirtied_seconds, 6)
        self.layout.workdir(uid).mkdir(parents=True, exist_ok=True)
        self.layout.rounds_record(uid).write_text(json.dumps([*done, {"round": number}]))
        return details

    def _rounds(self, uid: str) -> list[dict[str, int]]:
        record = self.layout.rounds_record(uid)
        return list(json.loads(record.read_text())) if record.exists() else []

    def _parent_of_final(self, command: CheckpointCommand, container: Container, images: Path) -> str | None:
        """Pre-copy: the last round's images, relative to the final dump's (CRIU's parent)."""
        if command.strategy != MigrationStrategy.PRE_COPY:
            return None
        done = self._rounds(command.migration.uid)
        if not done:
            return None
        last = self.layout.rounds_out(command.migration.uid) / str(done[-1]["round"])
        return os.path.relpath(last / container.name / "criu", images)

    def _forget_rounds(self, uid: str) -> None:
        shutil.rmtree(self.layout.rounds_out(uid), ignore_errors=True)
        self.layout.rounds_record(uid).unlink(missing_ok=True)

    # ----- dump -----

    async def dump(self, command: CheckpointCommand) -> Details:
        """Lock the network, freeze, dump every container of the pod, stream the images to
        the destination. On failure the pod runs again here before this step answers."""
        tls = self.config.require_tls()
        uid = command.migration.uid
        outgoing = self.layout.outgoing(uid)
        if not self.layout.dumped(uid).exists() and self.layout.pod_record(uid).exists():
            # An earlier agent died during this dump: see how far runc and CRIU got.
            await self._finish_interrupted_dump(command, outgoing)
        if command.strategy != MigrationStrategy.PRE_COPY:
            # Reconfigured after pre-copy rounds: the final dump stands alone, and their
            # images (as large as the pod's memory) would only crowd the node's memory.
            self._forget_rounds(uid)
        containers = None
        if not self.layout.dumped(uid).exists():
            containers = await self._movable_containers(command)
        # Reached before anything is frozen: a destination that cannot receive fails the
        # step while the pod still runs.
        channel = await self._open_channel(command, tls)
        stall = min(self.config.transfer_stall_seconds, command.timeout_seconds)
        growing: Growing | None = None
        lazy_problem: str | None = None
        try:
            streams = self.config.stream_dump and command.strategy != MigrationStrategy.POST_COPY
            if containers is not None and streams:
                # The memory travels while CRIU writes it (post-copy's stays behind).
                # once the dump is whole).
                growing = Growing(STREAMED_DURING_DUMP)
                dump_details, sent = await self._dump_streaming(
                    command, outgoing, containers, channel, growing, stall
                )
            else:
                sent, dump_details, lazy_problem = await self._dump_then_send(
                    command, outgoing, containers, channel, stall
                )
        except (TransferError, OSError, TimeoutError, RuntimeCommandError) as exc:
            reason = f"sending the images to {command.destination_node} failed: {exc}"
            raise StepFailed(reason + await self._rollback_note(command)) from None
        finally:
            channel.close()
        details: Details = {
            **dump_details,
            "bytes": sent.bytes - sent.skipped,
            "bytes_on_demand": sent.skipped,
            "files": sent.files,
            "transfer_mib_per_s": round(sent.mib_per_s, 1),
        }
        if growing is None:
            lazy_bytes = self._lazy_pages(uid) * PAGE_SIZE if self.lazy.is_lazy(uid) else 0
            details.update(
                lazy_pages=bool(lazy_bytes),
                bytes_on_demand=lazy_bytes,
                transfer_seconds=round(sent.seconds, 6),
            )
            if lazy_problem:
                details["lazy_problem"] = lazy_problem
        else:
            # In the freeze, the transfer is what was left to send once the dump had ended.
            details.update(
                lazy_pages=False,
                transfer_seconds=round(max(0.0, sent.ended_at - growing.finished_at), 6),
                transfer_total_seconds=round(sent.seconds, 6),
                bytes_sent_during_dump=growing.early_bytes,
            )
        return details

    async def _dump_then_send(
        self,
        command: CheckpointCommand,
        outgoing: Path,
        containers: list[Container] | None,
        channel: Channel,
        stall: float,
    ) -> tuple[TransferStats, Details, str | None]:
        """Dump (unless the images are there already), then send the images."""
        uid = command.migration.uid
        if containers is not None:
            dump_details = await self._first_dump(command, outgoing, containers)
        else:
            # A repeated dump after the images were made (e.g. the agent restarted during
            # the transfer): send the same images again.
            dump_details = json.loads(self.layout.dumped(uid).read_text())
        lazy_problem = None
        if command.strategy == MigrationStrategy.POST_COPY and not self._lazy_pages(uid):
            lazy_problem = self._no_lazy_memory(uid)
        report = self.progress.for_step(command, total=sending_size(outgoing, {}))
        sent = await channel.send(outgoing, stall_seconds=stall, progress=report)
        return sent, dump_details, lazy_problem

    async def _dump_streaming(
        self,
        command: CheckpointCommand,
        outgoing: Path,
        containers: list[Container],
        channel: Channel,
        growing: Growing,
        stall: float,
    ) -> tuple[Details, TransferStats]:
        """Dump and send at once: the pages image travels as CRIU writes it."""
        # What the progress counts towards until the dump says: the pod's memory now.
        estimate = resident_anonymous_bytes(c.pid for c in containers if c.pid)
        report = self.progress.for_step(command, total=estimate)
        # Nothing of an earlier try may be taken for this dump's pages.
        shutil.rmtree(outgoing, ignore_errors=True)
        sending = asyncio.ensure_future(
            channel.send(outgoing, stall_seconds=stall, progress=report, growing=growing)
        )
        try:
            dump_details = await self._first_dump(command, outgoing, containers)
        except BaseException:
            growing.fail()
            await asyncio.gather(sending, return_exceptions=True)
            raise
        growing.finish()
        return dump_details, await sending

    def _no_lazy_memory(self, uid: str) -> str:
        """Why a post-copy dump sends all its memory up front: what its pagemaps hold."""
        kinds: dict[str, dict[str, int]] = {}
        for record in json.loads(self.layout.pod_record(uid).read_text()):
            images = self.layout.outgoing(uid) / record["name"] / "criu"
            kinds[record["name"]] = {
                **pages_by_kind(images),
                "pagemaps": len(list(images.glob("pagemap-*.img"))),
            }
        problem = f"the dump holds no lazily restorable memory, so all of it goes now: {kinds}"
        log.warning("post-copy without lazy pages", extra={"migration": uid, "pages": kinds})
        return problem

    def _lazy_pages(self, uid: str) -> int:
        """How many pages the dump left for the page servers to serve."""
        total = 0
        for record in json.loads(self.layout.pod_record(uid).read_text()):
            total += pages_by_kind(self.layout.outgoing(uid) / record["name"] / "criu")["lazy"]
        return total

    async def _take_back_memory(self, uid: str) -> None:
        """Post-copy before the commit: the memory the lazy dumps still serve, fetched into
        their images (full dumps now) and the dumps let end, so the pod can be restored here;
        where the dump left the tasks frozen, the dumps just end."""
        if not self.lazy.is_lazy(uid):
            return
        if self.runtime.leaves_source_running:
            # The tasks stay frozen whatever ends the session (containerd): the memory is
            # still theirs, so the session just ends and the rollback thaws them.
            await self.lazy.release(uid, 0)
            self.lazy.forget(uid)
            return
        errors = []
        for name in self.lazy.names(uid):
            try:
                fetched = await self.lazy.take_back(uid, name)
            except LazyDumpLost as exc:
                errors.append(f"container {name}: {exc}")
                continue
            log.info(
                "took the memory back from a lazy dump",
                extra={"migration": uid, "container": name, "bytes": fetched},
            )
        self.lazy.forget(uid)
        if errors:
            raise StepFailed("; ".join(errors))

    async def _movable_containers(self, command: CheckpointCommand) -> list[Container]:
        containers = await asyncio.to_thread(self.runtime.pod_containers, command.pod.uid)
        if not containers:
            raise StepFailed(
                f"pod {command.pod.namespace}/{command.pod.name} (uid {command.pod.uid}) has no "
                f"containers on {self.node}"
            )
        await self._refuse_unmovable(containers)
        return containers

    async def _open_channel(
        self, command: CheckpointCommand, tls: AgentTls, *, transfer: str | None = None
    ) -> Channel:
        """The channel to the destination's agent (`transfer`: what it carries, by default
        the migration's final images). It may be restarting (a new address, on the sandbox a
        new port): tried again, the address looked up again, for a while."""
        node = command.destination_node
        patience = min(self.config.transfer_connect_seconds, command.timeout_seconds / 2)
        deadline = time.monotonic() + patience
        while True:
            try:
                host, port = (await self._transfer_address(node)).rsplit(":", 1)
                return await open_channel(
                    host.strip("[]"),
                    int(port),
                    migration=transfer or command.migration.uid,
                    tls=tls,
                    connect_seconds=max(0.5, min(5.0, deadline - time.monotonic())),
                )
            except (StepFailed, TransferError) as exc:
                if time.monotonic() >= deadline:
                    raise StepFailed(
                        f"cannot send the images to {node}: {exc} (tried for {patience:.0f}s; "
                        "nothing was frozen, the pod runs on here)"
                    ) from None
            await asyncio.sleep(0.5)

    async def _first_dump(
        self, command: CheckpointCommand, outgoing: Path, containers: list[Container]
    ) -> Details:
        """Freeze and dump the pod into `outgoing`."""
        uid = command.migration.uid
        self.layout.workdir(uid).mkdir(parents=True, exist_ok=True)
        self.layout.pod_record(uid).write_text(json.dumps([container_record(c) for c in containers]))
        shutil.rmtree(outgoing, ignore_errors=True)
        self._start_hold(uid, containers)
        try:
            details = await self._freeze_and_dump(command, containers, outgoing)
        except StepFailed:
            await self._replay(uid)
            raise
        self.layout.dumped(uid).write_text(json.dumps(details))
        return details

    async def _finish_interrupted_dump(self, command: CheckpointCommand, outgoing: Path) -> None:
        """Pick up a dump an earlier agent started and died during. Once its runc commands have
        finished: if every container's images are complete (CRIU then ended the container),
        the dump is done and is packaged; if none were dumped, the pod still runs and the dump
        starts over; if some were and some not, the dumped ones are restored here and the step
        fails with the reason (the pod runs on the source, whole)."""
        uid = command.migration.uid
        records = json.loads(self.layout.pod_record(uid).read_text())
        if self.lazy.is_lazy(uid):
            # A post-copy dump whose agent died: its memory is fetched back and the pod runs here.
            note = await self._rollback_containers(command, records)
            raise StepFailed(f"the checkpoint agent restarted during a post-copy dump{note}")
        for record in records:
            await asyncio.to_thread(self.runtime.settle, record["id"])
        complete = [images_complete(outgoing / r["name"] / "criu") for r in records]
        if all(complete):
            containers = [
                Container(id=r["id"], status="stopped", pid=0, bundle=Path(r["bundle"]), annotations={})
                for r in records
            ]
            for record, container in zip(records, containers, strict=True):
                await self._package(container, outgoing / record["name"])
            stats = [read_stats(outgoing / r["name"] / "criu" / "stats-dump") for r in records]
            details: Details = {"containers": len(records), "resumed_after_agent_restart": True}
            details["pages_written"] = sum(int(st.get("pages_written", 0)) for st in stats)
            self.layout.dumped(uid).write_text(json.dumps(details))
            log.info("finished a dump an earlier agent started", extra={"migration": uid})
            return
        if any(complete):
            note = await self._rollback_containers(
                command, [r for r, done in zip(records, complete, strict=True) if done]
            )
            raise StepFailed(f"the checkpoint agent restarted during the dump{note}")
        # Nothing was dumped: the pod still runs here; the dump starts over.
        self.layout.pod_record(uid).unlink()

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
            images = outgoing / container.name / "criu"
            if command.strategy == MigrationStrategy.POST_COPY:
                # All but the memory, which stays in the frozen tasks until it is fetched.
                dumped = self.runtime.checkpoint_lazy(container.id, images)
                self.lazy.add(command.migration.uid, container.name, dumped)
                return
            parent = self._parent_of_final(command, container, images)
            self.runtime.checkpoint(container.id, images, tcp_established=True, parent=parent)

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
            await self._package(container, outgoing / container.name)
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

    async def _package(self, container: Container, target: Path) -> None:
        """What the destination needs besides CRIU's images: the OCI config, the container's
        record and its root filesystem (all of it, or on containerd its changes to the image)."""
        shutil.copy(container.bundle / "config.json", target / "config.json")
        (target / "container.json").write_text(json.dumps(container_record(container)))
        try:
            await asyncio.to_thread(self.runtime.package_rootfs, container, target)
        except RuntimeCommandError as exc:
            raise OSError(str(exc)) from None

    # ----- rollback -----

    async def abort(self, command: CheckpointCommand) -> Details:
        uid = command.migration.uid
        if self.outcomes.done(uid, CheckpointStep.FINALIZE):
            raise StepFailed("the migration was finalized (past its commit point): nothing to abort")
        if self.layout.pod_record(uid).exists():
            # Dumped, or a dump an earlier agent died during: whatever stopped runs again.
            pod = json.loads(self.layout.pod_record(uid).read_text())
            await self._take_back_memory(uid)  # a lazy dump's runc ends only then
            for record in pod:
                await asyncio.to_thread(self.runtime.settle, record["id"])
            await self._restore_source(command, pod)
            self.outcomes.forget(uid, CheckpointStep.DUMP)
            self.layout.pod_record(uid).unlink(missing_ok=True)
            self._forget_rounds(uid)
            return {"rolled_back": True}
        # Pre-copy rounds alone froze nothing: their images go.
        self._forget_rounds(uid)
        return {"rolled_back": False}

    async def _rollback_note(self, command: CheckpointCommand) -> str:
        """Roll back a dump on the source; the text to add to the step's error."""
        uid = command.migration.uid
        if not self.layout.dumped(uid).exists():
            return f"; the pod was not frozen and keeps running on {self.node}"
        try:
            await self._restore_source(command, json.loads(self.layout.pod_record(uid).read_text()))
        except StepFailed as exc:
            return f"; ROLLBACK FAILED: {exc.reason}"
        return f"; rolled back: the pod runs again on {self.node} with its connections"

    async def _rollback_containers(
        self, command: CheckpointCommand, containers: list[Container] | list[dict[str, str]]
    ) -> str:
        records = [c if isinstance(c, dict) else container_record(c) for c in containers]
        try:
            await self._restore_source(command, records)
        except StepFailed as exc:
            return f"; ROLLBACK FAILED: {exc.reason}"
        return f"; rolled back: the pod runs again on {self.node}"

    async def _restore_source(self, command: CheckpointCommand, pod: list[dict[str, str]]) -> None:
        """Bring the pod back on the source from its local images, into its own network
        namespace (CRIU's restore lifts the network lock)."""
        uid = command.migration.uid
        outgoing = self.layout.outgoing(uid)
        errors = []
        # Post-copy before the commit: the memory is brought into the images first.
        await self._take_back_memory(uid)
        for record in pod:
            if await asyncio.to_thread(self.runtime.thaw, record["id"]):
                continue  # left frozen by the dump (containerd): running again, network open
            state = await asyncio.to_thread(self.runtime.state, record["id"])
            if state == "paused":
                # Frozen for a dump that never began (its agent died in between): thawed.
                await asyncio.to_thread(self.runtime.resume, record["id"])
                continue
            if state == "running":
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
                    output=self.config.output_for(record["id"]),
                )
            except RuntimeCommandError as exc:
                errors.append(str(exc))
        if errors:
            raise StepFailed("; ".join(errors))
        await self._replay(uid)
        self.layout.dumped(uid).unlink(missing_ok=True)
        shutil.rmtree(outgoing, ignore_errors=True)

    # ----- finalize -----

    async def _release_lazy_dumps(self, command: CheckpointCommand) -> None:
        """Post-copy past the commit: the lazy dumps let end (the destination has every page),
        which ends the pod's tasks here."""
        uid = command.migration.uid
        if self.lazy.is_lazy(uid):
            await self.lazy.release(uid, command.timeout_seconds / 2)
            self.lazy.forget(uid)

    async def finalize(self, command: CheckpointCommand) -> Details:
        uid = command.migration.uid
        if not self.layout.dumped(uid).exists():
            raise StepFailed("nothing was dumped for this migration on this node: refusing to finalize")
        await self._release_lazy_dumps(command)
        for record in json.loads(self.layout.pod_record(uid).read_text()):
            await asyncio.to_thread(self.runtime.finish_source, record["id"])
        replayed = await self._replay(uid)
        freed = tree_size(self.layout.outgoing(uid))
        freed += tree_size(self.layout.rounds_out(uid))
        shutil.rmtree(self.layout.outgoing(uid), ignore_errors=True)
        self._forget_rounds(uid)
        self.layout.dumped(uid).unlink()
        return {"freed_bytes": freed, "replayed_packets": replayed}
