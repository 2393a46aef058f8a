"""Responses as the API server writes them."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tools.kube_emulator.errors import ApiError


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.status(), status=exc.code)


def wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")
