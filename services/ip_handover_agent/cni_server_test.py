"""The node's clm-cni shim (compiled here, as the image build does) against the agent's side."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.ip_handover_agent.cni_server import CniServer, parse_request
from tests.kit.containerd_node import build_cni_shim

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is missing: tools/setup/install-system-deps"
)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cni_shim(tmp_path_factory.mktemp("shim") / "clm-cni")


async def _call(shim: Path, socket: Path, env: dict[str, str], stdin: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(shim),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"CLM_CNI_SOCKET": str(socket), "NOT_CNI": "x", **env},
    )
    out, _ = await proc.communicate(stdin.encode())
    return proc.returncode or 0, out.decode()


async def test_a_cni_call_goes_through_the_agent_and_back(shim: Path, tmp_path: Path) -> None:
    server = await CniServer(tmp_path / "cni.sock", lookup=None).start()
    try:
        assert oct(os.stat(tmp_path / "cni.sock").st_mode & 0o777) == "0o600"
        code, out = await _call(shim, tmp_path / "cni.sock", {"CNI_COMMAND": "VERSION"}, "")
        assert code == 0 and "1.0.0" in json.loads(out)["supportedVersions"]
        # The plugin's own errors come back as CNI error objects, with its exit status.
        code, out = await _call(shim, tmp_path / "cni.sock", {"CNI_COMMAND": "ADD"}, "not json")
        assert code == 1 and "not JSON" in json.loads(out)["msg"]
    finally:
        await server.stop()


async def test_without_the_agent_the_runtime_is_told_to_try_again(shim: Path, tmp_path: Path) -> None:
    code, out = await _call(shim, tmp_path / "nobody.sock", {"CNI_COMMAND": "ADD"}, "{}")
    error = json.loads(out)
    assert code == 1 and error["code"] == 11 and "IP-handover agent does not answer" in error["msg"]


def test_only_the_cni_environment_is_taken() -> None:
    env, conf = parse_request(b'CNI_COMMAND=ADD\0CNI_NETNS=/var/run/netns/x\0PATH=/evil\0\0{"a": 1}')
    assert env == {"CNI_COMMAND": "ADD", "CNI_NETNS": "/var/run/netns/x"} and conf == '{"a": 1}'
    assert parse_request(b"\0{}") == ({}, "{}")
