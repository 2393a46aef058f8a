"""The Kubernetes HTTP API over the store (aiohttp): CRUD, status subresource, patches,
pods/eviction, list with selectors and pagination, and server-side Tables for kubectl.
Discovery (discovery.py), watches (watch_stream.py) and pods/log (pod_log.py) beside it."""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
from aiohttp import web

from tools.kube_emulator import disruptions, tables
from tools.kube_emulator.discovery import Discovery
from tools.kube_emulator.errors import ApiError
from tools.kube_emulator.patches import PatchError, json_patch, merge_patch, strategic_merge
from tools.kube_emulator.pod_log import proxy_pod_log
from tools.kube_emulator.resources import ResourceType
from tools.kube_emulator.responses import error_response, json_response, wants_table
from tools.kube_emulator.selectors import SelectorError, selectors
from tools.kube_emulator.store import Entry, Store
from tools.kube_emulator.validation import unknown_fields
from tools.kube_emulator.watch_stream import stream_watch

log = logging.getLogger(__name__)


# Answered by the kubelet in a real cluster: the emulator proxies pods/log to a node's
# kubelet endpoint (the sandbox's node runtimes serve one) and refuses the rest.
KUBELET_SUBRESOURCES = ("log", "exec", "attach", "portforward", "proxy")


class Api:
    def __init__(self, store: Store, *, bookmark_seconds: float = 5.0) -> None:
        self.store = store
        self.bookmark_seconds = bookmark_seconds

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
                "containers. In the CLM sandbox, look inside a pod through its node's containerd: "
                "`/opt/clm/containerd-2.1/usr/bin/ctr --address /run/clm-sbx/<node>/containerd.sock "
                "-n k8s.io containers list`, then `... tasks exec --exec-id look -t <container id> sh` "
                "(the pod's containerStatuses give the container id)",
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
                        return await stream_watch(
                            request, self.store, rt, namespace, bookmark_seconds=self.bookmark_seconds
                        )
                    return self._list(request, rt, namespace)
                if sub == "log":
                    return await proxy_pod_log(request, self.store, rt, namespace or "", name)
                return self._object(request, rt, self.store.get(rt, namespace or "", name))
            body = await self._body(request)
            if request.method == "POST":
                if sub == "eviction":
                    disruptions.evict(self.store, rt, namespace or "", name or "")
                    return json_response(
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Success",
                            "code": 201,
                        },
                        status=201,
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
            return error_response(exc)
        except SelectorError as exc:
            return error_response(ApiError(400, "BadRequest", str(exc)))

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

    def _object(
        self, request: web.Request, rt: ResourceType, entry: Entry, *, status: int = 200
    ) -> web.Response:
        if wants_table(request):
            return json_response(
                tables.table(rt, [entry.obj], entry.obj["metadata"].get("resourceVersion", "")), status=status
            )
        return web.Response(body=entry.raw, status=status, content_type="application/json")

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.Response:
        labels, fields = selectors(request)
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
        if wants_table(request):
            return json_response(tables.table(rt, [e.obj for _, e in items], rv, next_token))
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


def make_app(store: Store, *, bookmark_seconds: float = 5.0) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    Discovery(store.registry, lambda: store.rv).routes(app)
    api = Api(store, bookmark_seconds=bookmark_seconds)
    app.router.add_route("*", "/api/{path:v1/.+}", api.resource)
    app.router.add_route("*", "/apis/{path:[^/]+/[^/]+/.+}", api.resource)
    return app
