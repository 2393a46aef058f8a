"""pods/log, as the API server does it: proxied to the kubelet of the pod's node."""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web

from tools.kube_emulator.errors import ApiError
from tools.kube_emulator.resources import ResourceType
from tools.kube_emulator.store import Store


async def proxy_pod_log(
    request: web.Request, store: Store, rt: ResourceType, namespace: str, name: str
) -> web.StreamResponse:
    """The kubelet is found by the node's `status.daemonEndpoints.kubeletEndpoint.Port`,
    reached on loopback here."""
    pod = store.get(rt, namespace, name).obj
    containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
    container = request.query.get("container") or (containers[0] if len(containers) == 1 else "")
    if container not in containers:
        raise ApiError(
            400,
            "BadRequest",
            f"a container name must be specified for pod {name}, choose one of: {containers}"
            if not container
            else f"container {container} is not valid for pod {name}",
        )
    node_name = (pod.get("spec") or {}).get("nodeName")
    nodes = store.registry.get("", "v1", "nodes")
    node = None
    if node_name and nodes is not None:
        with contextlib.suppress(ApiError):
            node = store.get(nodes, "", node_name).obj
    port = (
        (((node or {}).get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}
    ).get("Port")
    if not port:
        raise ApiError(
            400,
            "BadRequest",
            f"pods/log is not served for {namespace}/{name}: no kubelet serves node "
            f"{node_name or '(none: the pod is not scheduled)'}. In the CLM sandbox every node's "
            "runtime serves its pods' output",
        )
    query = {k: v for k, v in request.query.items() if k in ("follow", "tailLines", "timestamps")}
    url = f"http://127.0.0.1:{int(port)}/containerLogs/{namespace}/{name}/{container}"
    async with aiohttp.ClientSession() as session:
        try:
            upstream = await session.get(url, params=query, timeout=aiohttp.ClientTimeout(total=None))
        except aiohttp.ClientError as exc:
            raise ApiError(
                500, "InternalError", f"the kubelet of {node_name} cannot be reached: {exc}"
            ) from None
        async with upstream:
            if upstream.status != 200:
                text = (await upstream.text()).strip()
                raise ApiError(upstream.status, "BadRequest" if upstream.status == 400 else "NotFound", text)
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
