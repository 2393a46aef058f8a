"""clm-kube-emulator: a Kubernetes API server for tests and the local sandbox (never for
production). It stores objects in memory (optionally persisted to a file) and speaks the
real HTTP API, so the official clients and kubectl work against it unchanged.

    python -m tools.kube_emulator.main --port 6443 --kubeconfig /tmp/clm.kubeconfig
    KUBECONFIG=/tmp/clm.kubeconfig kubectl get pods -A
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from tools.kube_emulator.server import make_app
from tools.kube_emulator.store import Store

log = logging.getLogger("clm.kube-emulator")


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def kubeconfig_text(url: str, namespace: str = "default") -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: clm-emulator\n  cluster:\n    server: {url}\n"
        "users:\n- name: clm-emulator\n  user:\n    token: clm-emulator\n"
        f"contexts:\n- name: clm-emulator\n  context:\n    cluster: clm-emulator\n    user: clm-emulator\n"
        f"    namespace: {namespace}\n"
        "current-context: clm-emulator\n"
    )


class Persistence:
    """Writes the store to a file at most once per `interval` while it changes, and at exit."""

    def __init__(self, store: Store, path: Path, interval: float = 1.0) -> None:
        self.store, self.path, self.interval = store, path, interval
        self.dirty = False
        store.on_change.append(self._mark)

    def _mark(self) -> None:
        self.dirty = True

    def load(self) -> None:
        if self.path.exists():
            self.store.load(self.path.read_bytes())
            log.info("state loaded from %s (resourceVersion %s)", self.path, self.store.rv)

    def save(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(self.store.dump())
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a file
        self.dirty = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.dirty:
                started = loop_time()
                self.save()
                # A dump blocks the server: with large states save less often, so that at
                # most a tenth of the time goes to saving.
                self.interval = max(1.0, 10 * (loop_time() - started))


async def serve(
    host: str,
    port: int,
    *,
    state_file: Path | None,
    kubeconfig: Path | None,
    bookmark_seconds: float,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    history: int = 200_000,
    seed_file: Path | None = None,
) -> None:
    store = Store(history=history)
    if seed_file:
        store.load(seed_file.read_bytes())
    persistence = Persistence(store, state_file) if state_file else None
    if persistence:
        persistence.load()
    runner = web.AppRunner(
        make_app(store, bookmark_seconds=bookmark_seconds), access_log=None, shutdown_timeout=5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    url = f"http://{host}:{bound}"
    if kubeconfig:
        kubeconfig.write_text(kubeconfig_text(url))
    print(
        f"kube-emulator listening on {url}" + (f" (kubeconfig {kubeconfig})" if kubeconfig else ""),
        flush=True,
    )
    saver = asyncio.create_task(persistence.run()) if persistence else None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if on_ready:
        on_ready(url)
    await stop.wait()
    store.close_watches()
    if saver:
        saver.cancel()
    if persistence:
        persistence.save()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clm-kube-emulator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6443, help="0 picks a free port")
    parser.add_argument("--state-file", type=Path, help="persist objects here (resumed at start)")
    parser.add_argument(
        "--seed-file", type=Path, help="load objects from this state file at start, never write it back"
    )
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for this server here")
    parser.add_argument(
        "--bookmark-seconds",
        type=float,
        default=5.0,
        help="interval of BOOKMARK events on watches that allow them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(
        serve(
            args.host,
            args.port,
            state_file=args.state_file,
            kubeconfig=args.kubeconfig,
            bookmark_seconds=args.bookmark_seconds,
            seed_file=args.seed_file,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
