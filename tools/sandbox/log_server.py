"""The node's container-log endpoint, as kubelet serves it (sandbox code): `GET
/containerLogs/{namespace}/{pod}/{container}?tailLines=N&timestamps=true&follow=true`.
The API emulator proxies `pods/{name}/log` here, so `kubectl logs [-f]` works.

aiohttp, as every HTTP server of the repository; the kubelet stand-in is thread-based, so the
server runs its own event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from clm.runtime.http import HttpServer
from services.checkpoint_agent.container_log import LogReader, render

# (namespace, pod, container) -> (the container's log file, its container id), or None
# when that container is not on this node.
Resolve = Callable[[str, str, str], "tuple[Path, str] | None"]
FOLLOW_POLL_SECONDS = 0.2
# What Go's strconv.ParseBool takes as true: kubectl sends "true", the Python client "True".
GO_TRUE = ("1", "t", "T", "true", "TRUE", "True")


class LogServer:
    def __init__(self, node: str, resolve: Resolve, alive: Callable[[str], bool]) -> None:
        self.node, self.resolve, self.alive = node, resolve, alive
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/{tail:.*}", self._not_found)
        self._server = HttpServer(app, host="127.0.0.1", port=0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"logs-{node}", daemon=True)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> LogServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _not_found(self, _: web.Request) -> web.Response:
        return _text(404, "not found: GET /containerLogs/{namespace}/{pod}/{container}\n")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        query = request.query
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
        except ValueError:
            return _text(400, f"tailLines must be a number, not {query['tailLines']!r}\n")
        timestamps = query.get("timestamps", "false") in GO_TRUE
        follow = query.get("follow", "false") in GO_TRUE
        found = self.resolve(namespace, pod, container)
        if found is None:
            return _text(404, f"container {container} of pod {namespace}/{pod} is not on {self.node}\n")
        log_file, container_id = found
        reader = LogReader(log_file)
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            await response.write(render(reader.poll(), tail=tail, timestamps=timestamps))
            while follow:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                lines = reader.poll()
                if lines:
                    await response.write(render(lines, timestamps=timestamps))
                elif not self.alive(container_id):
                    break  # the container exited or moved away: the stream ends
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client stopped following
        return response


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")
