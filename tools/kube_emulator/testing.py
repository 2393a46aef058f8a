"""Run the emulator in a background thread for tests: `with running_emulator() as url: ...`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.kube_emulator.main import serve
from tools.kube_emulator.store import Store


class EmulatorThread:
    def __init__(
        self,
        *,
        state_file: Path | None = None,
        kubeconfig: Path | None = None,
        bookmark_seconds: float = 5.0,
        history: int = 200_000,
        port: int = 0,
    ) -> None:
        self.port = port
        self.state_file, self.kubeconfig, self.bookmark_seconds = state_file, kubeconfig, bookmark_seconds
        self.history = history
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()

        def ready(url: str) -> None:
            self.url = url
            self.ready.set()

        await serve(
            "127.0.0.1",
            self.port,
            state_file=self.state_file,
            kubeconfig=self.kubeconfig,
            bookmark_seconds=self.bookmark_seconds,
            on_ready=ready,
            stop=self._stop,
            history=self.history,
        )

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the kube emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextlib.contextmanager
def running_emulator(**kwargs: Any) -> Iterator[EmulatorThread]:
    emulator = EmulatorThread(**kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def api_client(url: str) -> object:
    """An official-client ApiClient pointed at the emulator."""
    from kubernetes import client  # - only tests need the client

    config = client.Configuration()
    config.host = url
    return client.ApiClient(config)


__all__ = ["EmulatorThread", "Store", "api_client", "running_emulator"]
