"""The chaos soak (tools/bench soak) as a test: moves between the sandbox's three nodes
under load, a fault in each, every fault kind injected three times (36 moves). Nothing may be lost (one copy
of each pod, where the outcome says; a move that says Finished kept the connection; each
server's state matches every answer it gave) and nothing left behind after any move.

Beside it, post-copy's risk window: two moves whose page stream breaks after the resume fail
with the reason, leave no copy and no pod object, and the pods made afresh serve again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.support import one_sandbox_at_a_time, pex_dir
from tools.benchmarks import soak
from tools.sandbox.sandbox import missing_requirements

MISSING = missing_requirements()  # root, runc, CRIU, containerd 2.1, ...
pytestmark = [
    # A turn may come after the other sandbox tests' (one sandbox per machine): the wait counts.
    pytest.mark.timeout(1200),
    pytest.mark.skipif(bool(MISSING), reason=f"{'; '.join(MISSING)}: run tools/setup/install-system-deps"),
]


@pytest.fixture(autouse=True)
def _take_turns() -> Iterator[None]:
    with one_sandbox_at_a_time():
        yield


def test_every_fault_three_times_nothing_lost_nothing_left() -> None:
    pexes = pex_dir()
    assert pexes is not None, "the service PEXes (pants test places them; or CLM_PEX_DIR)"
    rows, final = soak.soak(faults=3 * len(soak.FAULTS), seed=7, pex_dir=pexes)

    assert len(rows) == 3 * len(soak.FAULTS)
    injected = {r.fault for r in rows if r.injected}
    assert injected == set(soak.FAULTS), f"never injected: {set(soak.FAULTS) - injected}"
    for row in rows:
        assert row.outcome in ("Finished", "Failed") and row.reason, row
        assert not row.data_lost, row
        assert not row.leftovers, row
    # Each failed move rolled back to the source with its reason; the rest finished.
    assert sum(r.outcome == "Finished" for r in rows) >= len(rows) // 2, [
        (r.fault, r.phase, r.reason) for r in rows if r.outcome != "Finished"
    ]
    for server in final:
        assert server["state_intact"], server
        assert server["answers"] > 0, server


def test_post_copy_moves_broken_in_their_risk_window_leave_nothing_and_start_afresh() -> None:
    # The source's page traffic slowed, its agent killed once the pod resumed on the
    # destination: the page stream breaks inside the risk window, by design a loss.
    pexes = pex_dir()
    assert pexes is not None, "the service PEXes (pants test places them; or CLM_PEX_DIR)"
    rows, final = soak.soak(faults=2, seed=5, pex_dir=pexes, strategy="post-copy", kinds=["pages-cut"])

    for row in rows:
        assert row.injected and row.lost_in_risk_window, row
        assert "stopped arriving" in row.reason and "never ran with missing memory" in row.reason, row
        assert not row.data_lost, row  # no copy running, no pod object left
        assert not row.leftovers, row
    # The pod made afresh (as its controller would) serves a new player from a fresh state.
    for server in final:
        assert server["made_afresh"] == 1 and server["state_intact"] and server["answers"] > 0, server
