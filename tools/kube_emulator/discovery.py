"""Discovery, as kubectl and the client ask for it: /version, /api, /apis, each group's and
version's resource lists, and just enough OpenAPI v3 for kubectl to know fields are validated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from tools.kube_emulator.errors import ApiError
from tools.kube_emulator.resources import Registry
from tools.kube_emulator.responses import error_response, json_response

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


class Discovery:
    def __init__(self, registry: Registry, resource_version: Callable[[], int]) -> None:
        self.registry, self.resource_version = registry, resource_version

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for rt in sorted(self.registry.in_group_version(group, version), key=lambda r: r.plural):
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
        return json_response(self._resource_list("", "v1"))

    async def group_resources(self, request: web.Request) -> web.Response:
        group, version = request.match_info["group"], request.match_info["version"]
        if not self.registry.in_group_version(group, version):
            return error_response(
                ApiError(404, "NotFound", "the server could not find the requested resource")
            )
        return json_response(self._resource_list(group, version))

    async def version(self, request: web.Request) -> web.Response:
        return json_response(KUBERNETES_VERSION)

    async def api(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
            }
        )

    async def apis(self, request: web.Request) -> web.Response:
        groups = []
        for group, versions in sorted(self.registry.groups().items()):
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        versions = self.registry.groups().get(group)
        if not versions:
            return error_response(
                ApiError(404, "NotFound", "the server could not find the requested resource")
            )
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return json_response(
            {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": gvs,
                "preferredVersion": gvs[0],
            }
        )

    async def openapi_root(self, request: web.Request) -> web.Response:
        paths = {}
        for group, version, _ in self.registry.types:
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={self.resource_version()}"}
        return json_response({"paths": paths})

    async def openapi_group_version(self, request: web.Request) -> web.Response:
        parts = request.match_info["path"].strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        paths = {}
        for rt in self.registry.in_group_version(group, version):
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
            return error_response(
                ApiError(404, "NotFound", "the server could not find the requested resource")
            )
        return json_response(
            {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.30.0"},
                "paths": paths,
                "components": {"schemas": {}},
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/version", self.version)
        app.router.add_get("/version/", self.version)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/readyz", self.health)
        app.router.add_get("/livez", self.health)
        app.router.add_get("/api", self.api)
        app.router.add_get("/api/", self.api)
        app.router.add_get("/apis/", self.apis)
        app.router.add_get("/openapi/v3", self.openapi_root)
        app.router.add_get("/openapi/v3/{path:.+}", self.openapi_group_version)
        # Clients ask for discovery documents with and without a trailing slash.
        app.router.add_get("/api/v1", self.core_resources)
        app.router.add_get("/api/v1/", self.core_resources)
        app.router.add_get("/apis", self.apis)
        app.router.add_get("/apis/{group}", self.group)
        app.router.add_get("/apis/{group}/", self.group)
        app.router.add_get("/apis/{group}/{version}", self.group_resources)
        app.router.add_get("/apis/{group}/{version}/", self.group_resources)
