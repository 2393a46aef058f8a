"""Pre-copy for real, in a VM whose kernel tracks dirty memory (this machine's does not).

tests/kit/vm boots Debian's kernel under qemu with this machine's root shared read-only;
inside, precopy_guest.py moves the stateful server between two nodes through both nodes'
real agents over NATS, with pre-copy: rounds while it runs and its client writes, then the
final dump on top of the last round. The rounds must shrink, the final dump must hold only
what changed since, and the client's connection and the server's state must come through.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tests.integration.precopy_guest import RESULT
from tests.integration.support import one_sandbox_at_a_time
from tests.kit.vm.boot import missing_requirements, run_in_vm

MISSING = missing_requirements()
STATE_MIB = 128
GUEST_MODULES = [
    "tests.integration.precopy_guest",
    "services.checkpoint_agent.main",
    "services.ip_handover_agent.main",
    "tests.kit.workloads.counting_client",
]

pytestmark = [
    pytest.mark.skipif(
        bool(MISSING), reason=f"needs {', '.join(MISSING)}: run tools/setup/install-system-deps as root"
    ),
    pytest.mark.timeout(1500),
]


def test_pre_copy_rounds_shrink_and_the_pod_moves_whole(tmp_path: Path) -> None:
    # The VM keeps both of this machine's cores busy: it takes turns with the sandbox tests.
    with one_sandbox_at_a_time():
        run = run_in_vm(
            tmp_path / "vm",
            ["-m", "tests.integration.precopy_guest", "--state-mib", str(STATE_MIB)],
            modules=GUEST_MODULES,
            timeout=1200,
        )
    lines = [line for line in run.console.splitlines() if line.startswith(RESULT)]
    assert lines, f"the guest printed no result (exit {run.exit_code}):\n{run.console[-6000:]}"
    result = json.loads(lines[-1].removeprefix(RESULT))
    assert run.exit_code == 0 and result["ok"], json.dumps(result, indent=2)
    assert result["strategy"] == "pre-copy", result
    pages = [int(r["pages_written"]) for r in result["rounds"]]
    state_pages = STATE_MIB * 2**20 // 4096
    assert len(pages) >= 2, result
    assert pages[0] >= state_pages, result  # round 1: all of the memory, the pod running
    assert all(later < earlier for earlier, later in itertools.pairwise(pages)), result
    # The freeze copies only what the client changed since the last round.
    assert result["final_pages"] < state_pages // 10, result
    assert result["client"]["in_order"] and result["client"]["error"] is None, result
