"""The Kubernetes HTTP API over the store (aiohttp): discovery, CRUD, status subresource,
pods/eviction, list with selectors and pagination, watch with resume and bookmarks, and
server-side Tables for kubectl."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tools.kube_emulator import tables
from tools.kube_emulator.patches import PatchError, json_patch, merge_patch, strategic_merge
from tools.kube_emulator.resources import ResourceType
from tools.kube_emulator.selectors import SelectorError, field_selector, label_selector
from tools.kube_emulator.store import ApiError, Entry, Store
from tools.kube_emulator.validation import unknown_fields

log = logging.getLogger(__name__)
KUBERNETES_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-clm-emulator",
    "platform": "linux/amd64",
    "goVersion": "go1.22",
    "compiler": "gc",
    "gitCommit": "clm",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


# Answered by the kubelet in a real cluster: the emulator proxies pods/log to a node's
# kubelet endpoint (the sandbox's node runtimes serve one) and refuses the rest.
KUBELET_SUBRESOURCES = ("log", "exec", "attach", "portforward", "proxy")


class Api:
    def __init__(self, store: Store, *, bookmark_seconds: float = 5.0) -> None:
        self.store = store
        self.bookmark_seconds = bookmark_seconds

    # ----- discovery -----

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for rt in sorted(self.store.registry.in_group_version(group, version), key=lambda r: r.plural):
            entry = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": rt.verbs(),
                "shortNames": list(rt.short_names),
            }
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            if rt.status_subresource:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
            if rt.kind == "Pod" and not group:
                resources.append(
                    {
                        "name": "pods/ephemeralcontainers",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Pod",
                        "verbs": ["get", "patch", "update"],
                    }
                )
                resources.append(
                    {
                        "name": "pods/eviction",
                        "singularName": "",
                        "namespaced": True,
                        "group": "policy",
                        "version": "v1",
                        "kind": "Eviction",
                        "verbs": ["create"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    async def core_resources(self, request: web.Request) -> web.Response:
        return _json(self._resource_list("", "v1"))

    async def group_resources(self, request: web.Request) -> web.Response:
        group, version = request.match_info["group"], request.match_info["version"]
        if not self.store.registry.in_group_version(group, version):
            return _error(ApiError(404, "NotFound", "the server could not find the requested resource"))
        return _json(self._resource_list(group, version))

    async def version(self, request: web.Request) -> web.Response:
        return _json(KUBERNETES_VERSION)

    async def api(self, request: web.Request) -> web.Response:
        return _json(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
            }
        )

    async def apis(self, request: web.Request) -> web.Response:
        groups = []
        for group, versions in sorted(self.store.registry.groups().items()):
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        versions = self.store.registry.groups().get(group)
        if not versions:
            return _error(ApiError(404, "NotFound", "the server could not find the requested resource"))
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return _json(
            {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": gvs,
                "preferredVersion": gvs[0],
            }
        )

    # ----- OpenAPI v3: just enough for kubectl to know the server validates fields -----

    async def openapi_root(self, request: web.Request) -> web.Response:
        paths = {}
        for group, version, _ in self.store.registry.types:
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={self.store.rv}"}
        return _json({"paths": paths})

    async def openapi_group_version(self, request: web.Request) -> web.Response:
        parts = request.match_info["path"].strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        paths = {}
        for rt in self.store.registry.in_group_version(group, version):
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            scope = "/namespaces/{namespace}" if rt.namespaced else ""
            paths[f"{prefix}{scope}/{rt.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": rt.kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        if not paths:
            return _error(ApiError(404, "NotFound", "the server could not find the requested resource"))
        return _json(
            {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.30.0"},
                "paths": paths,
                "components": {"schemas": {}},
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # ----- resources -----

    def _parse(self, request: web.Request) -> tuple[ResourceType, str | None, str | None, str | None]:
        path = request.match_info["path"].strip("/").split("/")
        if request.path.startswith("/api/"):
            group, version, rest = "", path[0], path[1:]
        else:
            group, version, rest = path[0], path[1], path[2:]
        namespace = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.store.registry.get(group, version, rest[0])
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rt.kind == "Pod" and sub == "log" and request.method == "GET":
            return rt, namespace, name, sub
        if rt.kind == "Pod" and sub in KUBELET_SUBRESOURCES:
            raise ApiError(
                400,
                "BadRequest",
                f"pods/{sub} is not served: the Kubernetes API emulator streams no sessions into "
                "containers. In the CLM sandbox, look inside a pod with `runc --root <sandbox state "
                "dir>/nodes/<node>/runc list` (its containers) and `... exec -t <container id> sh`",
            )
        if (
            sub not in (None, "status", "eviction", "ephemeralcontainers")
            or (sub in ("eviction", "ephemeralcontainers") and rt.kind != "Pod")
            or (sub == "status" and not rt.status_subresource)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rt, namespace, name, sub

    async def resource(self, request: web.Request) -> web.StreamResponse:
        try:
            rt, namespace, name, sub = self._parse(request)
            if request.method == "GET":
                if name is None:
                    if request.query.get("watch") in ("1", "true", "True"):
                        return await self._watch(request, rt, namespace)
                    return self._list(request, rt, namespace)
                if sub == "log":
                    return await self._pod_log(request, rt, namespace or "", name)
                return self._object(request, rt, self.store.get(rt, namespace or "", name))
            body = await self._body(request)
            if request.method == "POST":
                if sub == "eviction":
                    self.store.evict(rt, namespace or "", name or "")
                    return _json(
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Success",
                            "code": 201,
                        },
                        201,
                    )
                if name is not None:
                    raise ApiError(405, "MethodNotAllowed", "POST is not allowed on a named object")
                self._strict_fields(request, rt, body)
                return self._object(request, rt, self.store.create(rt, namespace, body), status=201)
            if name is None:
                raise ApiError(405, "MethodNotAllowed", f"{request.method} needs an object name")
            if request.method == "PUT":
                self._strict_fields(request, rt, body)
                return self._object(
                    request, rt, self.store.update(rt, namespace or "", name, body, subresource=sub)
                )
            if request.method == "PATCH":
                return self._object(request, rt, self._patch(request, rt, namespace or "", name, sub, body))
            if request.method == "DELETE":
                entry = self.store.delete(rt, namespace or "", name)
                return self._object(request, rt, entry)
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")
        except ApiError as exc:
            return _error(exc)
        except SelectorError as exc:
            return _error(ApiError(400, "BadRequest", str(exc)))

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from None

    def _strict_fields(self, request: web.Request, rt: ResourceType, body: Any) -> None:
        """fieldValidation=Strict (kubectl's default): unknown fields of a custom resource
        are an error rather than silently pruned."""
        if (
            request.query.get("fieldValidation") != "Strict"
            or rt.schema is None
            or not isinstance(body, dict)
        ):
            return
        unknown = unknown_fields(body, rt.schema)
        if unknown:
            raise ApiError(
                400,
                "BadRequest",
                "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in unknown),
            )

    def _patch(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str, sub: str | None, body: Any
    ) -> Entry:
        ctype = request.content_type
        current = self.store.get(rt, namespace, name).obj
        try:
            if ctype == "application/merge-patch+json":
                patched = merge_patch(current, body)
            elif ctype == "application/json-patch+json":
                patched = json_patch(current, body)
            elif ctype == "application/strategic-merge-patch+json":
                if rt.schema is not None:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "strategic merge patch is not supported "
                        "for custom resources: use a merge patch (application/merge-patch+json)",
                    )
                patched = strategic_merge(current, body)
            elif ctype == "application/apply-patch+yaml":
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "server-side apply is not supported by this "
                    "emulator: use kubectl apply --server-side=false",
                )
            else:
                raise ApiError(
                    415, "UnsupportedMediaType", f"the patch content type {ctype!r} is not " "supported"
                )
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patch does not produce an object")
        self._strict_fields(request, rt, patched)
        # A patch carries a resourceVersion only to ask for optimistic concurrency.
        wanted = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = (
            wanted or current["metadata"]["resourceVersion"]
        )
        return self.store.update(rt, namespace, name, patched, subresource=sub)

    async def _pod_log(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str
    ) -> web.StreamResponse:
        """pods/log, as the API server does it: proxied to the kubelet of the pod's node (its
        `status.daemonEndpoints.kubeletEndpoint.Port`, reached on loopback here)."""
        pod = self.store.get(rt, namespace, name).obj
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
        nodes = self.store.registry.get("", "v1", "nodes")
        node = None
        if node_name and nodes is not None:
            with contextlib.suppress(ApiError):
                node = self.store.get(nodes, "", node_name).obj
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
                    raise ApiError(
                        upstream.status, "BadRequest" if upstream.status == 400 else "NotFound", text
                    )
                response = web.StreamResponse(headers={"Content-Type": "text/plain"})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

    def _object(
        self, request: web.Request, rt: ResourceType, entry: Entry, *, status: int = 200
    ) -> web.Response:
        if _wants_table(request):
            return _json(
                tables.table(rt, [entry.obj], entry.obj["metadata"].get("resourceVersion", "")), status
            )
        return web.Response(body=entry.raw, status=status, content_type="application/json")

    def _selectors(self, request: web.Request) -> tuple[Any, Any]:
        """Predicates for the request's selectors; None where there is no selector."""
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        return (label_selector(labels) if labels else None, field_selector(fields) if fields else None)

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.Response:
        labels, fields = self._selectors(request)
        rv = str(self.store.rv)
        token = request.query.get("continue")
        after = None
        if token:
            try:
                rv, after_ns, after_name = orjson.loads(base64.urlsafe_b64decode(token))
            except Exception:
                raise ApiError(400, "BadRequest", "invalid continue token") from None
            after = (after_ns, after_name)
        limit = int(request.query.get("limit") or 0)
        items = self.store.list(rt, namespace, labels, fields, after=after, limit=limit)
        next_token = None
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1][0]
            next_token = base64.urlsafe_b64encode(orjson.dumps([rv, *last])).decode()
        if _wants_table(request):
            return _json(tables.table(rt, [e.obj for _, e in items], rv, next_token))
        meta = b'{"resourceVersion":"' + rv.encode() + b'"'
        if next_token:
            meta += b',"continue":"' + next_token.encode() + b'"'
        body = (
            b'{"kind":"'
            + rt.kind.encode()
            + b'List","apiVersion":"'
            + rt.api_version.encode()
            + b'","metadata":'
            + meta
            + b'},"items":['
            + b",".join(e.raw for _, e in items)
            + b"]}"
        )
        return web.Response(body=body, content_type="application/json")

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        labels, fields = self._selectors(request)
        since_text = request.query.get("resourceVersion")
        since = int(since_text) if since_text and since_text != "0" else None
        as_table = _wants_table(request)
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        await response.prepare(request)
        try:
            watcher = self.store.watch(rt, namespace, since, labels, fields)
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
                    item = await asyncio.wait_for(watcher.queue.get(), min(left, self.bookmark_seconds))
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
                                        "metadata": {"resourceVersion": str(self.store.rv)},
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
            self.store.stop_watch(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


def make_app(store: Store, *, bookmark_seconds: float = 5.0) -> web.Application:
    api = Api(store, bookmark_seconds=bookmark_seconds)
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/version", api.version)
    app.router.add_get("/version/", api.version)
    app.router.add_get("/healthz", api.health)
    app.router.add_get("/readyz", api.health)
    app.router.add_get("/livez", api.health)
    app.router.add_get("/api", api.api)
    app.router.add_get("/api/", api.api)
    app.router.add_get("/apis/", api.apis)
    app.router.add_get("/openapi/v3", api.openapi_root)
    app.router.add_get("/openapi/v3/{path:.+}", api.openapi_group_version)
    # Clients ask for discovery documents with and without a trailing slash.
    app.router.add_get("/api/v1", api.core_resources)
    app.router.add_get("/api/v1/", api.core_resources)
    app.router.add_get("/apis", api.apis)
    app.router.add_get("/apis/{group}", api.group)
    app.router.add_get("/apis/{group}/", api.group)
    app.router.add_get("/apis/{group}/{version}", api.group_resources)
    app.router.add_get("/apis/{group}/{version}/", api.group_resources)
    app.router.add_route("*", "/api/{path:v1/.+}", api.resource)
    app.router.add_route("*", "/apis/{path:[^/]+/[^/]+/.+}", api.resource)
    return app
