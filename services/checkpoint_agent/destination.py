"""The destination side of a move: check the CPU before any freeze, expect the images,
restore the pod into its prepared network namespace, or remove what was restored (abort)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from clm.contracts import CheckpointCommand, CheckpointStep, MigrationStrategy
from clm.contracts.protocol import StepFailed
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent import process
from services.checkpoint_agent.bundle import rebind
from services.checkpoint_agent.checkpoint_archive import archive_name, write_archive
from services.checkpoint_agent.config import AgentConfig, CapabilityLookup
from services.checkpoint_agent.criu_stats import read_stats
from services.checkpoint_agent.outcomes import Details, OutcomeStore
from services.checkpoint_agent.page_fills import Fill, PageFills
from services.checkpoint_agent.pre_copy_rounds import ExpectedTransfers, stack_rounds
from services.checkpoint_agent.progress import ProgressReporter
from services.checkpoint_agent.restore_handler.server import Offer, RestoreHandlerServer
from services.checkpoint_agent.runtime import ContainerRuntime, LazyPagesUnavailable, RuntimeCommandError

log = logging.getLogger(__name__)
# How long the freeze is put off for kubelet to start the clone pod (sandbox, network,
# image): past it the move goes on, and the restore waits for kubelet instead.
CLONE_PATIENCE_SECONDS = 60.0


class DestinationSide:
    def __init__(
        self,
        config: AgentConfig,
        runtime: ContainerRuntime,
        capabilities: CapabilityLookup,
        outcomes: OutcomeStore,
        handler: RestoreHandlerServer | None = None,
        progress: ProgressReporter | None = None,
    ) -> None:
        self.config, self.layout = config, config.layout
        # Post-copy: the fill's progress, as the pages arrive.
        self.progress = progress or ProgressReporter(None, node=config.node)
        # Containerd nodes: the RuntimeClass handler's socket, where kubelet's creation of the
        # clone's containers meets the images (restore_handler/).
        self.handler = handler
        self._background: set[asyncio.Task[None]] = set()
        # The archives being written of a migration's images, which its fill step drops.
        self._archiving: dict[str, asyncio.Task[None]] = {}
        self.node = config.node
        self.runtime, self.capabilities, self.outcomes = runtime, capabilities, outcomes
        # Post-copy: restored containers whose memory is still arriving.
        self.fills = PageFills(runtime, config.layout)
        # Until a local lazy-pages daemon fails to start here (no userfaultfd).
        self._lazy_pages_here = True
        for container_id in self.fills.stop_orphans():
            log.warning(
                "stopped a container whose memory was still arriving when this agent last stopped",
                extra={"container": container_id},
            )
        # Offered to the transfer server: migration uid -> where its images go.
        self.expected_transfers = ExpectedTransfers(self.layout)
        # An agent killed mid-transfer leaves a staging directory: never restorable.
        for pattern in ("*.partial-*", "*.rounds/*.partial-*"):
            for partial in (config.image_dir / "in").glob(pattern):
                shutil.rmtree(partial, ignore_errors=True)
        for marker in (config.state_dir / "migrations").glob("*/expected"):
            uid = marker.parent.name
            self.expected_transfers[uid] = self.layout.incoming(uid)

    # ----- check-cpu -----

    async def check_cpu(self, command: CheckpointCommand) -> Details:
        """Before any freeze: can this node run what the source's CPU runs? Also announces
        that this node expects the migration's images."""
        self.config.require_tls()
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
            code, out = await process.run(self.config.criu, "cpuinfo", "check", "-D", tmp)
        if code != 0:
            lines = [line for line in out.splitlines() if "Error" in line or "mismatch" in line.lower()]
            raise StepFailed(
                f"this node's CPU cannot run what {command.source_node} runs (criu cpuinfo check): "
                + ("; ".join(lines[-3:]) or out.strip()[-300:])
            )
        uid = command.migration.uid
        self.layout.workdir(uid).mkdir(parents=True, exist_ok=True)
        self.layout.expected(uid).write_text(command.source_node)
        self.expected_transfers[uid] = self.layout.incoming(uid)
        return {"source_arch": source.arch}

    # ----- await-clone (before the freeze) -----

    async def await_clone(self, command: CheckpointCommand) -> Details:
        """Containerd nodes: wait until kubelet has the clone pod's sandbox up and its first
        container's creation waiting in the restore handler, so the freeze that follows does
        not wait for kubelet's pod start-up. A clone kubelet is slow to start is no failure:
        the move goes on, and the restore waits for kubelet as before."""
        if self.handler is None:
            return {"parked": False, "waited_seconds": 0.0, "why": "this node restores clones itself"}
        source = f"{command.pod.namespace}/{command.pod.name}"
        started = time.perf_counter()
        patience = min(CLONE_PATIENCE_SECONDS, command.timeout_seconds * 0.8)
        parked = await self.handler.wait_parked(source, patience)
        waited = round(time.perf_counter() - started, 6)
        if not parked:
            log.warning(
                "kubelet has not created the clone's container yet: the freeze goes on without it",
                extra={"pod": source, "waited_seconds": waited},
            )
        return {"parked": parked, "waited_seconds": waited}

    # ----- restore -----

    async def restore(self, command: CheckpointCommand) -> Details:
        uid, pod_uid = command.migration.uid, command.pod.uid
        incoming = self.layout.incoming(uid)
        if not incoming.is_dir():
            raise StepFailed(f"no complete image of the pod has arrived from {command.source_node}")
        if command.strategy == MigrationStrategy.PRE_COPY:
            stack_rounds(self.layout.rounds_in(uid), incoming)
        else:
            # Rounds sent before the move was reconfigured: the restore does not use them.
            shutil.rmtree(self.layout.rounds_in(uid), ignore_errors=True)
        if self.runtime.restores_through_handler:
            return await self._restore_through_handler(command, incoming)
        netns = pod_netns_path(self.node, pod_uid, self.config.netns_dir)
        if not netns.exists():
            raise StepFailed(
                f"the pod's network namespace {netns} is not prepared on {self.node} "
                "(the IP-handover agent's prepare step)"
            )
        pages_address = await self._pages_address(command) if self._post_copy(command) else None
        # No more transfers for this migration: what is restored is what arrived.
        self.expected_transfers.pop(uid, None)
        started = time.perf_counter()
        restored: list[str] = []
        phases: dict[str, float] = {}
        try:
            for package in sorted(p for p in incoming.iterdir() if p.is_dir()):
                restored.append(await self._restore_container(command, package, netns, phases, pages_address))
            if broken := self.fills.broken(uid):
                raise OSError("; ".join(broken))
        except (RuntimeCommandError, OSError, KeyError, ValueError) as exc:
            await self.fills.cancel(uid)
            await asyncio.to_thread(self._remove_restored, pod_uid)
            self.expected_transfers[uid] = incoming
            raise StepFailed(f"restore on {self.node} failed, nothing left running here: {exc}") from None
        seconds = time.perf_counter() - started
        stats = read_stats(next(iter(sorted(incoming.glob("*/criu/stats-restore"))), incoming / "-"))
        shutil.rmtree(self.layout.rounds_in(uid), ignore_errors=True)
        filling = self.fills.filling(uid)
        if filling:
            # The pod runs here; its memory is put in place after the network commit (the fill
            # step), from the source (post-copy: the commit point) or from these images.
            self.fills.resumed(uid)
        else:
            shutil.rmtree(incoming, ignore_errors=True)
        self.layout.expected(uid).unlink(missing_ok=True)
        details: Details = {"containers": len(restored), "restore_seconds": round(seconds, 6)}
        details["lazy_pages"] = pages_address is not None
        details["filled_after_commit"] = filling
        details.update({k: round(v, 6) for k, v in phases.items()})
        details.update({k: v for k, v in stats.items() if k in ("forking_seconds", "pages_restored")})
        return details

    async def _restore_through_handler(self, command: CheckpointCommand, incoming: Path) -> Details:
        """Containerd nodes: offer each container's images to the restore handler, and wait
        until kubelet's creation of the clone's containers has restored them all."""
        if self.handler is None:
            raise StepFailed(
                f"{self.node} restores through containerd but its restore handler is not serving"
            )
        post_copy = self._post_copy(command)
        if post_copy and self.handler.lazy_pages is None:
            raise StepFailed(
                f"{self.node} restores eagerly (CLM_LAZY_RESTORE=false), and post-copy needs a lazy restore: "
                "the memory is still on the source"
            )
        pages_address = await self._pages_address(command) if post_copy else None
        uid, source = command.migration.uid, f"{command.pod.namespace}/{command.pod.name}"
        packages = sorted(p for p in incoming.iterdir() if p.is_dir())
        self.expected_transfers.pop(uid, None)
        started = time.perf_counter()
        tunnels = (
            await self._page_tunnels(command, packages, pages_address, incoming) if pages_address else {}
        )
        offers = [
            self.handler.offer(
                source=source,
                container=p.name,
                package=p,
                page_server=tunnels[p.name].page_server() if p.name in tunnels else None,
            )
            for p in packages
        ]
        patience = max(5.0, command.timeout_seconds * 0.8)
        done, pending = await asyncio.wait([o.result for o in offers], timeout=patience)
        results = [f.result() for f in done if not f.cancelled()]
        restored = [r.container_id for r in results if r.code == 0]
        self._restored_file(uid).write_text(json.dumps(restored))
        # Restored lazily: their memory is put in place after the network commit (the fill
        # step), from these images or the source; the watcher stops a container whose
        # daemon fails.
        for offer in offers:
            result = offer.result.result() if offer.result.done() and not offer.result.cancelled() else None
            if result is not None and result.page_fill is not None:
                self.fills.adopt(
                    uid, name=offer.container, page_fill=result.page_fill, tunnel=tunnels.get(offer.container)
                )
        await self.fills.close_pending(
            uid, whole=frozenset(o.container for o in offers if o.container in tunnels and _filled(o))
        )
        failed = [
            f"{o.container}: {o.result.result().errors or 'exit ' + str(o.result.result().code)}"
            for o in offers
            if o.result.done() and not o.result.cancelled() and o.result.result().code != 0
        ]
        waiting = [o.container for o in offers if not o.result.done()]
        if failed or waiting:
            self.handler.withdraw(source)
            await self.fills.cancel(uid)
            await asyncio.to_thread(self._kill_restored, uid)
            self.expected_transfers[uid] = incoming
            self._after_restore(command, incoming, packages, failed=True)
            why = (
                "; ".join(failed)
                if failed
                else (
                    f"kubelet on {self.node} has not created the clone's container(s) {', '.join(waiting)} "
                    f"in {patience:.0f}s (is the clone pod bound to {self.node} with runtimeClassName "
                    "clm-restore?)"
                )
            )
            raise StepFailed(f"restore on {self.node} failed, nothing left running here: {why}")
        for container_id in restored:
            state = await asyncio.to_thread(self.runtime.state, container_id)
            if state != "running" or (broken := self.fills.broken(uid)):
                await self.fills.cancel(uid)
                await asyncio.to_thread(self._kill_restored, uid)
                why = "; ".join(broken) if state == "running" else f"is {state or 'gone'}"
                raise StepFailed(f"the clone's container {container_id} {why} right after its restore")
        self.layout.expected(uid).unlink(missing_ok=True)
        filling = self.fills.filling(uid)
        if filling:
            self.fills.resumed(uid)
        self._after_restore(command, incoming, packages, failed=False, keep_images=filling)
        return {
            "containers": len(restored),
            "restore_seconds": round(time.perf_counter() - started, 6),
            "lazy_pages": pages_address is not None,
            "filled_after_commit": filling,
            "through": "containerd",
        }

    def _after_restore(
        self,
        command: CheckpointCommand,
        incoming: Path,
        packages: list[Path],
        *,
        failed: bool,
        keep_images: bool = False,
    ) -> None:
        """Keep the checkpoint archives if asked (in the background: the freeze does not wait
        for them), then drop a restored pod's images (`keep_images`: its memory is still
        being filled from them; the fill step drops them)."""
        keep = self.config.checkpoint_archives
        wanted = self.config.checkpoint_archive_dir is not None and (
            keep == "always" or (keep == "failed" and failed)
        )

        def archive_then_drop() -> None:
            if wanted:
                self._keep_archives(command, packages, failed=failed)
            if not failed and not keep_images:
                shutil.rmtree(incoming, ignore_errors=True)
                shutil.rmtree(self.layout.rounds_in(command.migration.uid), ignore_errors=True)

        if not wanted:
            archive_then_drop()
            return
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(archive_then_drop))
        self._background.add(task)
        uid = command.migration.uid
        self._archiving[uid] = task

        def ended(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            if self._archiving.get(uid) is done:
                del self._archiving[uid]

        task.add_done_callback(ended)

    def _keep_archives(self, command: CheckpointCommand, packages: list[Path], *, failed: bool) -> None:
        assert self.config.checkpoint_archive_dir is not None
        for package in packages:
            name = archive_name(command.pod.namespace, command.pod.name, package.name)
            try:
                path = write_archive(package, self.config.checkpoint_archive_dir / name)
            except OSError as exc:
                log.warning(
                    "cannot keep the checkpoint archive", extra={"container": package.name, "error": str(exc)}
                )
                continue
            log.info("kept the checkpoint archive", extra={"path": str(path), "restore_failed": failed})

    def _restored_file(self, uid: str) -> Path:
        return self.layout.workdir(uid) / "restored-containers.json"

    def _kill_restored(self, uid: str) -> None:
        """The clone's containers this node restored for `uid`: ended (kubelet sees them exit)."""
        record = self._restored_file(uid)
        for container_id in json.loads(record.read_text()) if record.exists() else []:
            self.runtime.delete(container_id)

    @staticmethod
    def _post_copy(command: CheckpointCommand) -> bool:
        return command.strategy == MigrationStrategy.POST_COPY

    async def _page_tunnels(
        self, command: CheckpointCommand, packages: list[Path], pages_address: str, incoming: Path
    ) -> dict[str, Fill]:
        """Post-copy: each container's lazy-pages daemon reaches the source's pages through a
        tunnel of its own, opened before the offer."""
        uid = command.migration.uid
        tunnels: dict[str, Fill] = {}
        try:
            for package in packages:
                tunnels[package.name] = await self.fills.tunnel(
                    uid,
                    name=package.name,
                    images=package / "criu",
                    pages_address=pages_address,
                    tls=self.config.require_tls(),
                )
        except (OSError, ConnectionError) as exc:
            await self.fills.cancel(uid)
            self.expected_transfers[uid] = incoming
            raise StepFailed(f"the page tunnel to {command.source_node} cannot open: {exc}") from None
        return tunnels

    async def _pages_address(self, command: CheckpointCommand) -> str:
        source = await self.capabilities(command.source_node)
        if source is None or not source.pages_address or not source.post_copy:
            why = source.post_copy_problem if source is not None else "no capabilities published"
            raise StepFailed(f"{command.source_node} cannot serve post-copy pages: {why}")
        return source.pages_address

    async def _restore_container(
        self,
        command: CheckpointCommand,
        package: Path,
        netns: Path,
        phases: dict[str, float],
        pages_address: str | None,
    ) -> str:
        """Unpack one container's package into a bundle and restore it; `phases` adds up
        the time spent unpacking and in the runtime's restore."""
        pod_uid = command.pod.uid
        unpacking = time.perf_counter()
        config = json.loads((package / "config.json").read_text())
        name = package.name
        container_id = json.loads((package / "container.json").read_text())["id"]
        bundle = self.layout.pod_bundles(pod_uid) / name
        shutil.rmtree(bundle, ignore_errors=True)
        (bundle / "rootfs").mkdir(parents=True)
        code, out = await process.run("tar", "-C", str(bundle / "rootfs"), "-xf", str(package / "rootfs.tar"))
        if code != 0:
            raise OSError(f"unpacking the root filesystem of {name} failed: {out.strip()[-300:]}")
        cgroups = f"/clm/{self.node}/{container_id}"
        (bundle / "config.json").write_text(json.dumps(rebind(config, netns=netns, cgroups_path=cgroups)))
        # A leftover of an earlier try, once a restore an earlier agent left running is over.
        await asyncio.to_thread(self.runtime.settle, container_id, images=package / "criu")
        await asyncio.to_thread(self.runtime.delete, container_id)
        restoring = time.perf_counter()
        phases["unpack_seconds"] = phases.get("unpack_seconds", 0.0) + restoring - unpacking
        if pages_address is not None:
            await self.fills.restore(
                command.migration.uid,
                name=name,
                container_id=container_id,
                bundle=bundle,
                images=package / "criu",
                pages_address=pages_address,
                tls=self.config.require_tls(),
                output=self.config.output_for(container_id),
            )
        elif not await self._restore_filling_later(command, name, container_id, bundle, package):
            await asyncio.to_thread(
                self.runtime.restore,
                container_id,
                bundle,
                package / "criu",
                tcp_established=True,
                output=self.config.output_for(container_id),
            )
        phases["runtime_restore_seconds"] = (
            phases.get("runtime_restore_seconds", 0.0) + time.perf_counter() - restoring
        )
        state = await asyncio.to_thread(self.runtime.state, container_id)
        if state != "running":
            raise RuntimeCommandError(f"container {name} is {state or 'gone'} right after its restore")
        return container_id

    async def _restore_filling_later(
        self, command: CheckpointCommand, name: str, container_id: str, bundle: Path, package: Path
    ) -> bool:
        """The lazy restore from the images that arrived: the pod resumes at once and a local
        lazy-pages daemon fills its memory while the network commit goes on. False where no
        daemon can run here (the restore is then the eager one)."""
        if not self.config.lazy_restore or not self._lazy_pages_here:
            return False
        try:
            await self.fills.restore_local(
                command.migration.uid,
                name=name,
                container_id=container_id,
                bundle=bundle,
                images=package / "criu",
                output=self.config.output_for(container_id),
            )
        except LazyPagesUnavailable as exc:
            log.warning("lazy restore unavailable here, restoring eagerly", extra={"why": str(exc)})
            self._lazy_pages_here = False
            return False
        return True

    def _remove_restored(self, pod_uid: str) -> None:
        for container in self.runtime.pod_containers(pod_uid):
            self.runtime.delete(container.id)
        shutil.rmtree(self.layout.pod_bundles(pod_uid), ignore_errors=True)

    # ----- fill (after the network commit) -----

    async def fill(self, command: CheckpointCommand) -> Details:
        """After the network commit: wait until the restored pod's memory is all in place."""
        uid = command.migration.uid
        post_copy = self._post_copy(command)
        if not post_copy and not self.fills.filling(uid) and uid not in self.fills.orphaned:
            # An eager restore put the memory in place already, or a lazy one's fill ended
            # whole before this agent restarted: the images it kept for it go now.
            await self._drop_images(uid)
            return {"containers": 0, "risk_window_seconds": 0.0}
        details, problems = await self.fills.wait(uid, self.progress.for_step(command, total=0))
        await self._drop_images(uid)
        if problems and self.handler is not None and self.runtime.restores_through_handler:
            # The clone's stopped containers: kubelet restarting them is refused at once.
            self.handler.withdraw(f"{command.pod.namespace}/{command.pod.name}")
        if problems:
            where = (
                f"stopped arriving from {command.source_node}"
                if post_copy
                else f"could not be filled from its images on {self.node}"
            )
            raise StepFailed(
                f"the pod's memory {where} after it resumed here: "
                + "; ".join(problems)
                + f". The pod was stopped on {self.node}: it never ran with missing memory"
            )
        return details

    async def _drop_images(self, uid: str) -> None:
        """A restored pod's images, once nothing reads them (its fill, its archives)."""
        if (archiving := self._archiving.pop(uid, None)) is not None:
            await asyncio.gather(archiving, return_exceptions=True)
        shutil.rmtree(self.layout.incoming(uid), ignore_errors=True)
        shutil.rmtree(self.layout.rounds_in(uid), ignore_errors=True)

    # ----- abort -----

    async def abort(self, command: CheckpointCommand) -> Details:
        uid = command.migration.uid
        await self.fills.cancel(uid)
        # A restore an earlier agent died during may still be making its container.
        incoming = self.layout.incoming(uid)
        for record in incoming.glob("*/container.json") if incoming.is_dir() else ():
            container_id = json.loads(record.read_text())["id"]
            await asyncio.to_thread(self.runtime.settle, container_id, images=record.parent / "criu")
        if self.runtime.restores_through_handler:
            if self.handler is not None:
                self.handler.withdraw(f"{command.pod.namespace}/{command.pod.name}")
            await asyncio.to_thread(self._kill_restored, uid)
        else:
            await asyncio.to_thread(self._remove_restored, command.pod.uid)
        # A transfer still arriving (the coordinator stopped waiting for it: a cancel) is
        # dropped when it ends; one that settled before is removed here.
        self.expected_transfers.withdraw(uid)
        shutil.rmtree(self.layout.incoming(uid), ignore_errors=True)
        shutil.rmtree(self.layout.rounds_in(uid), ignore_errors=True)
        self.layout.expected(uid).unlink(missing_ok=True)
        self.outcomes.forget(uid, CheckpointStep.RESTORE, CheckpointStep.CHECK_CPU)
        return {"removed": True}


def _filled(offer: Offer) -> bool:
    """Whether a lazily restored container had all its memory by the time its restore answered."""
    if not offer.result.done() or offer.result.cancelled():
        return False
    result = offer.result.result()
    return result.code == 0 and result.page_fill is None
