"""The capability probe: what CRIU can do on this node.

Parsing is pure (tested with recorded outputs); `run_probe` is the thin adapter that runs
the real `criu` binary.
"""

from __future__ import annotations

import asyncio
import base64
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# `criu check --feature NAME` exits 0 when supported.
FEATURES = {
    "dirty_memory_tracking": "mem_dirty_track",
    "userfaultfd": "uffd-noncoop",
    "tcp_established": "tcp_half_closed",
}


@dataclass
class ProbeResult:
    arch: str
    criu_version: str | None = None
    probe_ok: bool = False
    features: dict[str, bool] = field(default_factory=dict)
    cpuinfo_image_b64: str | None = None
    problems: list[str] = field(default_factory=list)


def parse_version(output: str) -> str | None:
    match = re.search(r"^Version:\s*(\S+)", output, re.MULTILINE)
    return match.group(1) if match else None


def version_problem(version: str | None) -> str | None:
    """CLM needs CRIU >= 4.2 (older releases cannot dump TCP sockets on current kernels)."""
    if version is None:
        return "criu did not report a version"
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if len(parts) < 2 or tuple(parts) < (4, 2):
        return f"CRIU {version} is too old: CLM needs 4.2 or newer"
    return None


def normalise_arch(machine: str) -> str:
    """Kubernetes' `kubernetes.io/arch` spelling of `uname -m`."""
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


async def _run(*argv: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(errors="replace")


async def run_probe(criu: str = "criu") -> ProbeResult:
    result = ProbeResult(arch=normalise_arch(platform.machine()))
    code, out = await _run(criu, "--version")
    if code != 0:
        result.problems.append(f"cannot run {criu}: {out.strip()[:200]}")
        return result
    result.criu_version = parse_version(out)
    if problem := version_problem(result.criu_version):
        result.problems.append(problem)
    code, out = await _run(criu, "check")
    if code != 0:
        # CRIU's own error lines say what is missing; its last line only that something is.
        errors = [line.strip() for line in out.splitlines() if line.startswith("Error")]
        result.problems.append(f"criu check failed: {errors or out.strip().splitlines()[-1:]}")
    for name, feature in FEATURES.items():
        code, _ = await _run(criu, "check", "--feature", feature)
        result.features[name] = code == 0
    with tempfile.TemporaryDirectory(prefix="clm-cpuinfo-") as tmp:
        code, out = await _run(criu, "cpuinfo", "dump", "-D", tmp)
        image = Path(tmp, "cpuinfo.img")
        if code == 0 and image.is_file():
            result.cpuinfo_image_b64 = base64.b64encode(image.read_bytes()).decode()
        else:
            result.problems.append(f"criu cpuinfo dump failed: {out.strip()[:200]}")
    result.probe_ok = not result.problems
    return result
