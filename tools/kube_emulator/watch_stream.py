"""Watches, streamed as the API server streams them."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from tools.kube_emulator import tables
from tools.kube_emulator.errors import ApiError
from tools.kube_emulator.resources import ResourceType
from tools.kube_emulator.responses import wants_table
from tools.kube_emulator.selectors import selectors
from tools.kube_emulator.store import Store


async def stream_watch(
    request: web.Request, store: Store, rt: ResourceType, namespace: str | None, *, bookmark_seconds: float
) -> web.StreamResponse:
    """A watch: each change as a JSON line, from `resourceVersion` on (410 when it is gone),
    bookmarks while nothing changes, until `timeoutSeconds` or the client leaves."""
    labels, fields = selectors(request)
    since_text = request.query.get("resourceVersion")
    since = int(since_text) if since_text and since_text != "0" else None
    as_table = wants_table(request)
    bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
    timeout = float(request.query.get("timeoutSeconds") or 1800)
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    )
    await response.prepare(request)
    try:
        watcher = store.watch(rt, namespace, since, labels, fields)
    except ApiError as exc:
        await response.write(orjson.dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
        return response
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(watcher.queue.get(), min(left, bookmark_seconds))
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away
                if bookmarks:
                    await response.write(
                        orjson.dumps(
                            {
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": rt.kind,
                                    "apiVersion": rt.api_version,
                                    "metadata": {"resourceVersion": str(store.rv)},
                                },
                            }
                        )
                        + b"\n"
                    )
                continue
            if item is None:
                break
            kind, entry = item
            chunks = [(kind, entry)]
            # Drain what is already queued into one write: far fewer syscalls under load.
            while not watcher.queue.empty() and len(chunks) < 512:
                queued = watcher.queue.get_nowait()
                if queued is None:
                    break
                chunks.append(queued)
            out = bytearray()
            for kind, entry in chunks:
                if as_table:
                    obj = tables.table(rt, [entry.obj], entry.obj["metadata"].get("resourceVersion", ""))
                    out += orjson.dumps({"type": kind, "object": obj}) + b"\n"
                else:
                    out += b'{"type":"' + kind.encode() + b'","object":' + entry.raw + b"}\n"
            await response.write(bytes(out))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        store.stop_watch(watcher)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
