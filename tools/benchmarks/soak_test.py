from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tools.benchmarks.soak import NFT_PREFIX, forget_dead_runs_rules


def tables() -> set[str]:
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in listing.splitlines()}


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft to make host tables"
)
def test_a_killed_runs_fault_rules_are_removed_a_live_runs_kept() -> None:
    # CI once failed at 'fault rules left in the host' before any move: an earlier soak,
    # killed mid-fault, had left its table, and every later soak would have failed too.
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, live = f"{NFT_PREFIX}{gone.pid}", f"{NFT_PREFIX}{os.getpid()}"
    for name in (dead, live):
        subprocess.run(["nft", "add", "table", "inet", name], check=True)
    try:
        forget_dead_runs_rules()
        assert dead not in tables()
        assert live in tables()
    finally:
        for name in (dead, live):
            subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True, check=False)
