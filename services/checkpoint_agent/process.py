"""Running the node's tools (tar, criu) from the agent's event loop."""

from __future__ import annotations

import asyncio
import subprocess


async def run(*argv: str) -> tuple[int, str]:
    """Exit code and combined output of a command; 127 if it is not installed."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")
