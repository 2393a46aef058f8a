import asyncio

from prometheus_client import CollectorRegistry, Counter

from clm.runtime.http import HealthServer


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("clm_test_things_total", "things", registry=registry).inc()
    ready = {"value": (False, "starting")}
    server = HealthServer(host="127.0.0.1", port=0, registry=registry, readiness=lambda: ready["value"])
    await server.start()
    try:
        assert await _get(server.port, "/healthz") == (200, b"ok\n")
        assert (await _get(server.port, "/readyz"))[0] == 503
        ready["value"] = (True, "ready")
        assert await _get(server.port, "/readyz") == (200, b"ready\n")
        status, body = await _get(server.port, "/metrics")
        assert status == 200 and b"clm_test_things_total 1.0" in body
        assert (await _get(server.port, "/nope"))[0] == 404
        assert (await _get(server.port, "/healthz", method="POST"))[0] == 405
    finally:
        await server.stop()
