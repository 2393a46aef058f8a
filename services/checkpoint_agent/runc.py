"""The container runtime adapter for runc (the sandbox's node runtime and tests)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from services.checkpoint_agent.container_log import start_relay
from services.checkpoint_agent.lazy_dumps import LazyCheckpoint
from services.checkpoint_agent.runtime import (
    POD_UID,
    CheckpointResult,
    Container,
    LazyPagesUnavailable,
    PageFill,
    RuntimeCommandError,
)

LAZY_LOG = "lazy-pages.log"
RUNC_LAZY_LOG = "runc-lazy-dump.log"
# Where a lazy dump's page server listens, in the dump's own network namespace (so any
# port is free there).
LAZY_DUMP_PORT = 2701
# A lazy dump writes all but the memory: seconds even for a large pod.
LAZY_DUMP_READY_SECONDS = 120.0
# The lazy-pages daemon fills memory at several hundred MiB/s; this bounds a stuck one.
LAZY_FILL_TIMEOUT = 600.0
# A pre-dump copies the whole memory in its first round; a slow node may need a while.
PRE_DUMP_TIMEOUT = 600.0

log = logging.getLogger(__name__)


def _cmdlines() -> list[tuple[int, list[str]]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                out.append((int(entry.name), raw.decode(errors="replace").split("\0")))
    return out


def _processes_with(program: str, *needles: str) -> list[int]:
    """PIDs of `program` processes whose command line holds every needle."""
    found = []
    for pid, argv in _cmdlines():
        if pid == os.getpid() or not argv or Path(argv[0]).name != program:
            continue
        line = " ".join(argv)
        if all(n in line for n in needles):
            found.append(pid)
    return found


def _runc_commands_on(container_id: str, base: list[str]) -> list[int]:
    """runc commands on the container under this runtime's state root (another node's runc,
    on the same host in tests and the sandbox, may work on a container of the same id)."""
    root = next((a for a in base[1:] if a.startswith("--root=")), None)
    return [
        pid
        for pid, argv in _cmdlines()
        if argv
        and Path(argv[0]).name == "runc"
        and container_id in argv[1:]
        and (root is None or root in argv[1:])
    ]


def criu_log_tail(image_dir: Path, name: str) -> str:
    log = image_dir / name
    if not log.exists():
        return ""
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "Error" in line and "RLIMIT_NOFILE" not in line
    ]
    return "\n".join(lines[-8:])


class Runc:
    # Its checkpoint ends the container; a rollback restores it from the images.
    leaves_source_running = False
    # The agent restores containers itself (no kubelet on the node).
    restores_through_handler = False

    def __init__(self, *, root: Path | None = None, runc: str = "runc", criu: str = "criu") -> None:
        # A state root of our own keeps our containers apart from anyone else's runc use.
        self.base = [runc] + ([f"--root={root}"] if root else [])
        if criu != "criu":
            # runc runs CRIU itself for checkpoint and restore: the same binary as the agent's.
            self.base.append(f"--criu={criu}")
        self.criu = criu
        self.criu_name = Path(criu).name

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args],
            # Its own session: runc and CRIU outlive an agent that dies mid-command (a dump
            # cut short by killing CRIU ends the dumped process with it).
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _detached(
        self, *args: str, log: Path, output: Path | None = None, timeout: float = 120
    ) -> tuple[int, str]:
        """Commands that leave a container running (-d) hand it their stdio: /dev/null (CRIU
        restores that anywhere), or with `output` pipes to a log relay (runc hands pipes to
        CRIU at restore); runc's own errors are read from --log."""
        log.unlink(missing_ok=True)
        stdout: int = subprocess.DEVNULL
        stderr: int = subprocess.DEVNULL
        if output is not None:
            stdout, stderr = start_relay(output)
        try:
            proc = subprocess.run(
                [*self.base, f"--log={log}", *args],
                start_new_session=True,  # as above: a restore outlives the agent
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                timeout=timeout,
                check=False,
            )
        finally:
            if output is not None:
                os.close(stdout)  # the container holds its own copies
                os.close(stderr)
        text = log.read_text(errors="replace") if log.exists() else ""
        errors = [line for line in text.splitlines() if '"level":"error"' in line or "level=error" in line]
        return proc.returncode, "\n".join(errors[-5:]) or text[-1000:]

    def run(
        self, container_id: str, bundle: Path, *, output: Path | None = None, pid_file: Path | None = None
    ) -> None:
        """Start a container; its output goes to the CRI log file `output`, or nowhere; its
        first process's host PID to `pid_file`."""
        code, errors = self._detached(
            "run",
            "-d",
            "-b",
            str(bundle),
            *(["--pid-file", str(pid_file)] if pid_file is not None else []),
            container_id,
            log=bundle / f"runc-run-{container_id}.log",
            output=output,
        )
        if code != 0:
            raise RuntimeCommandError(f"runc run {container_id} failed: {errors}")

    def containers(self) -> list[Container]:
        proc = self._run("list", "--format", "json")
        if proc.returncode != 0:
            raise RuntimeCommandError(f"runc list failed: {proc.stderr.strip()}")
        return [
            Container(
                id=item["id"],
                status=item["status"],
                pid=int(item.get("pid") or 0),
                bundle=Path(item["bundle"]),
                annotations=dict(item.get("annotations") or {}),
            )
            for item in (json.loads(proc.stdout or "null") or [])
        ]

    def pod_containers(self, pod_uid: str) -> list[Container]:
        return [c for c in self.containers() if c.annotations.get(POD_UID) == pod_uid]

    def state(self, container_id: str) -> str | None:
        proc = self._run("state", container_id)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout).get("status")

    def pid(self, container_id: str) -> int | None:
        proc = self._run("state", container_id)
        return json.loads(proc.stdout).get("pid") if proc.returncode == 0 else None

    def checkpoint(
        self, container_id: str, image_dir: Path, *, tcp_established: bool = True, parent: str | None = None
    ) -> CheckpointResult:
        """Freeze and dump the container (which ends it). With `parent` (a pre-copy round's
        images, relative to `image_dir`), only the memory written since that round is dumped."""
        image_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        args = ["checkpoint", f"--image-path={image_dir.resolve()}"]
        if tcp_established:
            args.append("--tcp-established")
        if parent:
            args.append(f"--parent-path={parent}")
        proc = self._frozen_first(container_id, args)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeCommandError(
                f"checkpoint of {container_id} failed: {proc.stderr.strip()}\n"
                f"{criu_log_tail(image_dir, 'dump.log')}"
            )
        size = sum(p.stat().st_size for p in image_dir.iterdir() if p.is_file())
        return CheckpointResult(image_dir, seconds, size)

    def _frozen_first(
        self, container_id: str, args: list[str], *, leaves_it_alive: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a CRIU checkpoint command on a container runc has frozen already. CRIU freezes
        a running container's cgroup itself and then sleeps 100 ms before it looks again
        (criu/seize.c freeze_processes: the freezer is still FREEZING on its first read); a
        cgroup already frozen it takes as it is. runc's own freeze takes a few milliseconds.
        CRIU puts a cgroup it found frozen back to frozen when it lets the tasks go on living
        (pstree_switch_state: a pre-dump, a failed dump), so then it is thawed here."""
        paused = self._run("pause", container_id).returncode == 0
        proc = self._run(*args, container_id, timeout=timeout)
        if paused and (leaves_it_alive or proc.returncode != 0) and self.state(container_id) == "paused":
            self.resume(container_id)
        return proc

    def pre_dump(self, container_id: str, image_dir: Path, *, parent: str | None) -> CheckpointResult:
        """One pre-copy round: the container's memory (with `parent`, only what it wrote since
        that round) copied while it keeps running, after a freeze of a few milliseconds."""
        image_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        args = ["checkpoint", "--pre-dump", f"--image-path={image_dir.resolve()}"]
        if parent:
            args.append(f"--parent-path={parent}")
        proc = self._frozen_first(container_id, args, leaves_it_alive=True, timeout=PRE_DUMP_TIMEOUT)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeCommandError(
                f"pre-dump of {container_id} failed: {proc.stderr.strip()}\n"
                f"{criu_log_tail(image_dir, 'dump.log')}"
            )
        size = sum(p.stat().st_size for p in image_dir.iterdir() if p.is_file())
        return CheckpointResult(image_dir, seconds, size)

    def checkpoint_lazy(
        self, container_id: str, image_dir: Path, *, leave_running: bool = False
    ) -> LazyCheckpoint:
        """Post-copy's dump: freeze the container and dump all but its anonymous memory, which
        CRIU then serves from the frozen tasks on a page server (`runc checkpoint
        --lazy-pages`). Returns once the images are written and the server listens. runc
        runs in a network namespace of its own with only loopback up, so the server is
        reachable only by entering it (LazyDumps). The dump ends the container when its one
        page-server connection ends (with `leave_running`, it puts the tasks back as it found
        them: a container paused first stays paused); runc and CRIU outlive the agent (their
        own session)."""
        image_dir = image_dir.resolve()
        image_dir.mkdir(parents=True, exist_ok=True)
        log_file = image_dir / RUNC_LAZY_LOG
        paused = self._run("pause", container_id).returncode == 0
        ready, ready_w = os.pipe()
        errors = log_file.with_suffix(".err")
        try:
            with errors.open("wb") as stderr:
                proc = subprocess.Popen(
                    [
                        "unshare",
                        "--net",
                        "--",
                        "sh",
                        "-c",
                        'ip link set lo up && exec "$@"',
                        "clm-lazy-dump",
                        *self.base,
                        f"--log={log_file}",
                        "checkpoint",
                        *(["--leave-running"] if leave_running else []),
                        f"--image-path={image_dir}",
                        "--tcp-established",
                        "--lazy-pages",
                        f"--page-server=127.0.0.1:{LAZY_DUMP_PORT}",
                        f"--status-fd={ready_w}",
                        container_id,
                    ],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(ready_w,),
                )
        finally:
            os.close(ready_w)
        try:
            # runc writes one byte once CRIU's page server listens; EOF if it ended first.
            readable, _, _ = select.select([ready], [], [], LAZY_DUMP_READY_SECONDS)
            signal_byte = os.read(ready, 1) if readable else b""
        finally:
            os.close(ready)
        if signal_byte != b"\0":
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if paused and self.state(container_id) == "paused":
                self.resume(container_id)  # CRIU put back the frozen state it found
            runc_log = log_file.read_text(errors="replace")[-1000:] if log_file.exists() else ""
            raise RuntimeCommandError(
                f"lazy checkpoint of {container_id} failed: {errors.read_text(errors='replace').strip()}"
                f" {runc_log}\n{criu_log_tail(image_dir, 'dump.log')}"
            )

        def wait(seconds: float) -> int | None:
            try:
                return proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return None

        return LazyCheckpoint(pid=proc.pid, port=LAZY_DUMP_PORT, image_dir=image_dir, wait=wait)

    def restore_lazy(
        self,
        container_id: str,
        bundle: Path,
        image_dir: Path,
        *,
        page_server: tuple[str, int] | None = None,
        output: Path | None = None,
    ) -> PageFill:
        """Restore a container without waiting for its anonymous memory: a `criu lazy-pages`
        daemon fills it through userfaultfd, faults first and the rest in the background,
        from `page_server` (post-copy: the source's pages) or, with none, from the local
        images (faster than the eager restore's reads of tmpfs's small pages). Returns as
        soon as the container runs; the daemon exits 0 once every page is in place. Raises
        LazyPagesUnavailable if the local daemon cannot start (no userfaultfd)."""
        image_dir = image_dir.resolve()
        starting = time.perf_counter()
        daemon = self._lazy_pages_from(image_dir, page_server)
        if daemon.returncode is not None:
            why = f"the lazy-pages daemon did not start (exit {daemon.returncode}): " + criu_log_tail(
                image_dir, LAZY_LOG
            )
            if page_server is None:
                raise LazyPagesUnavailable(why)
            raise RuntimeCommandError(f"restore of {container_id} failed: {why}")
        started = time.perf_counter()
        args = ["restore", "-d", f"--image-path={image_dir}", "-b", str(bundle.resolve())]
        # CRIU finds the daemon's socket in its work directory.
        args += ["--tcp-established", "--lazy-pages", f"--work-path={image_dir}"]
        code, errors = self._detached(
            *args, container_id, log=bundle / f"runc-restore-{container_id}.log", output=output
        )
        if code != 0:
            daemon.kill()
            daemon.wait()
            raise RuntimeCommandError(
                f"restore of {container_id} failed: {errors}\n{criu_log_tail(image_dir, 'restore.log')}"
            )
        log.info(
            "restored lazily",
            extra={
                "container": container_id,
                "daemon_start_seconds": round(started - starting, 4),
                "resumed_seconds": round(time.perf_counter() - started, 4),
                "pages_from": "the source" if page_server else "local images",
            },
        )
        return PageFill(container_id=container_id, image_dir=image_dir, daemon=daemon)

    def restore(
        self,
        container_id: str,
        bundle: Path,
        image_dir: Path,
        *,
        tcp_established: bool = True,
        output: Path | None = None,
    ) -> float:
        """Restore a container from its images, its memory read in before it runs (the eager
        restore; `restore_lazy` resumes it first). Output the container wrote to pipes
        continues into the CRI log file `output` (else nowhere)."""
        started = time.perf_counter()
        image_dir = image_dir.resolve()
        # The image path must be absolute: runc changes into the bundle first.
        args = ["restore", "-d", f"--image-path={image_dir}", "-b", str(bundle.resolve())]
        if tcp_established:
            args.append("--tcp-established")
        code, errors = self._detached(
            *args, container_id, log=bundle / f"runc-restore-{container_id}.log", output=output
        )
        if code != 0:
            raise RuntimeCommandError(
                f"restore of {container_id} failed: {errors}\n" f"{criu_log_tail(image_dir, 'restore.log')}"
            )
        return time.perf_counter() - started

    def lazy_pages_daemon(
        self, image_dir: Path, page_server: tuple[str, int] | None = None
    ) -> subprocess.Popen[bytes] | None:
        """A `criu lazy-pages` daemon for `image_dir`, or None where none can run: its pages
        from the local images, or from `page_server` (post-copy: the source's, tunnelled)."""
        daemon = self._lazy_pages_from(image_dir, page_server)
        if daemon.returncode is None:
            return daemon
        log.warning(
            "lazy restore unavailable, restoring eagerly",
            extra={"images": str(image_dir), "criu": criu_log_tail(image_dir, LAZY_LOG)},
        )
        return None

    def _lazy_pages_from(
        self, image_dir: Path, page_server: tuple[str, int] | None
    ) -> subprocess.Popen[bytes]:
        if page_server is None:
            return self._start_lazy_pages(image_dir, wait=5)
        host, port = page_server
        return self._start_lazy_pages(
            image_dir, "--page-server", "--address", host, "--port", str(port), wait=30
        )

    def _start_lazy_pages(self, image_dir: Path, *args: str, wait: float) -> subprocess.Popen[bytes]:
        """A `criu lazy-pages` daemon for `image_dir` (`args`: where its pages come from), once
        its socket is there for the restore; one that could not start is returned ended."""
        socket_path = image_dir / "lazy-pages.socket"
        socket_path.unlink(missing_ok=True)
        daemon = subprocess.Popen(
            [
                self.criu,
                "lazy-pages",
                *args,
                "-D",
                str(image_dir),
                "--work-dir",
                str(image_dir),
                "-o",
                LAZY_LOG,
            ],
            start_new_session=True,  # it serves the restored container even if the agent dies
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait
        while not socket_path.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                if daemon.poll() is None:
                    daemon.kill()
                daemon.wait()
                return daemon
            time.sleep(0.005)
        return daemon

    def pause(self, container_id: str) -> None:
        proc = self._run("pause", container_id)
        if proc.returncode != 0:
            raise RuntimeCommandError(f"runc pause {container_id} failed: {proc.stderr.strip()}")

    def resume(self, container_id: str) -> None:
        proc = self._run("resume", container_id)
        if proc.returncode != 0:
            raise RuntimeCommandError(f"runc resume {container_id} failed: {proc.stderr.strip()}")

    def delete(self, container_id: str) -> None:
        self._run("delete", "--force", container_id)

    def node_problems(self) -> list[str]:
        return []

    def thaw(self, container_id: str) -> bool:
        """Nothing to resume: a runc checkpoint ended the container."""
        return False

    def finish_source(self, container_id: str) -> None:
        """The move is committed: the dumped container's leftovers go."""
        self.delete(container_id)

    def package_rootfs(self, container: Container, target: Path) -> None:
        """The container's root filesystem as `rootfs.tar` (the bundle's own directory)."""
        proc = subprocess.run(
            [
                "tar",
                "-C",
                str(container.bundle / "rootfs"),
                "--one-file-system",
                "-cf",
                str(target / "rootfs.tar"),
                ".",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeCommandError(
                f"packing the root filesystem of {container.name} failed: {proc.stderr[-300:]}"
            )

    def settle(self, container_id: str, *, images: Path | None = None, timeout: float = 600) -> None:
        """Wait until no runc command on the container still runs (an agent that died mid-
        checkpoint or mid-restore leaves runc and CRIU to finish on their own); a lazy-pages
        daemon still serving `images` for a restore nobody waits for goes."""
        deadline = time.monotonic() + timeout
        while _runc_commands_on(container_id, self.base):
            if time.monotonic() > deadline:
                raise RuntimeCommandError(f"runc commands on {container_id} still run after {timeout:g}s")
            time.sleep(0.05)
        if images is not None:
            for pid in _processes_with(self.criu_name, "lazy-pages", str(images.resolve())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
