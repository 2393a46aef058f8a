"""HTTP for CLM's processes, on aiohttp (the one HTTP stack of the repository).

`HttpServer` serves an aiohttp application on a port (0: a free one); `HealthServer` is the
one port of every service: /healthz, /readyz and /metrics. Probes and Prometheus scrapes are
all it serves, on the service's event loop, so it answers while handlers are busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HttpServer:
    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._app, self._host, self._port = app, host, port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("server not started")
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        # Access logs would log every probe and scrape.
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None


def health_app(*, registry: CollectorRegistry, readiness: Callable[[], tuple[bool, str]]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = readiness()
        return web.Response(status=200 if ready else 503, text=f"{detail}\n")

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def not_found(_: web.Request) -> web.Response:
        return web.Response(status=404, text="not found: try /healthz, /readyz or /metrics\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    # GET only: any other method on a known path is a 405, as on the routes above.
    app.router.add_get("/{tail:.*}", not_found)
    return app


class HealthServer(HttpServer):
    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Callable[[], tuple[bool, str]],
    ) -> None:
        super().__init__(health_app(registry=registry, readiness=readiness), host=host, port=port)
