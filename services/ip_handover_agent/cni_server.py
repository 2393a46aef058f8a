"""The IP-handover agent's side of the node's clm-cni shim (cni_shim/clm-cni.c): a Unix
socket the shim hands each CNI call to, answered by running the plugin here, in the host's
network namespace where the agent runs, with the agent's own access to the API.

Why: clm-cni is Python, and Kubernetes nodes have no Python 3.11 to run its PEX; the shim is
static C, and the container runtime runs it as any CNI plugin. Wire format: clm-cni.c.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from services.ip_handover_agent.cni import KubeLookup, execute

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20


def parse_request(data: bytes) -> tuple[dict[str, str], str]:
    """The CNI environment and the configuration from one request."""
    if data.startswith(b"\0"):
        block, conf = b"", data[1:]
    else:
        block, sep, conf = data.partition(b"\0\0")
        if not sep:
            raise ValueError("the request has no end of its environment")
    env = {}
    for entry in block.split(b"\0") if block else []:
        key, _, value = entry.decode(errors="replace").partition("=")
        if key.startswith("CNI_"):
            env[key] = value
    return env, conf.decode(errors="replace")


class CniServer:
    def __init__(self, socket_path: Path, lookup: KubeLookup | None) -> None:
        self.socket_path, self.lookup = socket_path, lookup
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> CniServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)  # the runtime (root) only
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(MAX_REQUEST + 1)
            while len(data) <= MAX_REQUEST and (more := await reader.read(MAX_REQUEST + 1 - len(data))):
                data += more
            if len(data) > MAX_REQUEST:
                code, out = (
                    1,
                    json.dumps({"cniVersion": "1.0.0", "code": 4, "msg": "the CNI request is over 1 MiB"}),
                )
            else:
                env, conf = parse_request(data)
                # The plugin shells out to iproute2 and its delegate: off the event loop.
                code, out = await asyncio.to_thread(execute, conf, {**_base_env(), **env}, self.lookup)
                log.info(
                    "cni call",
                    extra={
                        "command": env.get("CNI_COMMAND"),
                        "container": env.get("CNI_CONTAINERID"),
                        "code": code,
                    },
                )
            writer.write(f"{code}".encode() + b"\0" + out.encode() + (b"\n" if out else b""))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except Exception as exc:  # - the shim must hear why
            log.exception("a CNI call failed")
            error = {"cniVersion": "1.0.0", "code": 999, "msg": f"clm-cni failed in the agent: {exc}"}
            writer.write(b"1\0" + json.dumps(error).encode())
        finally:
            writer.close()


def _base_env() -> dict[str, str]:
    """What the plugin needs of the agent's own environment (its tools on PATH)."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
