"""End to end through all five services in the sandbox: the evictor-planner bin-packs a
fragmented cluster (tools/sandbox/binpack.py) and everything the label matrix says happens,
for real — runc containers on three nodes (network namespaces), CRIU, both node agents,
the coordinator, the labeler, NATS and the API emulator:

- the nodes are labeled from their agents' probes, the eligible pods from the policy core;
- sbx-1 is cordoned and emptied: its StatefulSet pod moves live keeping its name, its
  ReplicaSet pod moves live as `-clone-1`, each Migration with the documented event
  sequence on NATS and as Kubernetes Events; its opted-out pod is evicted; NodeDrained;
- a player holding one connection to the StatefulSet pod never reconnects, and the
  server's state is exactly what the player sent;
- the protected pod, and every pod on the nodes not drained, stay where they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from clm.contracts import protocol, streams, subjects
from clm.contracts.events import MIGRATION_EVENT_ADAPTER
from tests.integration.support import fetch_from_stream, log_excerpts, one_sandbox_at_a_time, pex_dir
from tests.integration.support import wait_for as _wait_for
from tests.kit.podlab import expected_hash
from tools.sandbox import binpack
from tools.sandbox.demo import Player
from tools.sandbox.sandbox import Sandbox, missing_requirements

MISSING = missing_requirements()  # root, runc, CRIU, containerd 2.1, ...
pytestmark = [
    # A turn may come after the other sandbox tests' (one sandbox per machine): the wait counts.
    pytest.mark.timeout(1200),
    pytest.mark.skipif(bool(MISSING), reason=f"{'; '.join(MISSING)}: run tools/setup/install-system-deps"),
]
STATE_MIB = 32
SEQUENCE = ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    return _wait_for(check, what, timeout, every=0.3)


@pytest.fixture(autouse=True)
def _take_turns() -> Iterator[None]:
    with one_sandbox_at_a_time():
        yield


def test_the_planner_bin_packs_the_sandbox_live(tmp_path: Path) -> None:
    built = pex_dir()
    if built is None:
        pytest.skip("the sandbox runs the service PEXes: run under `pants test` or set CLM_PEX_DIR=dist")
    sandbox = Sandbox(state_dir=tmp_path / "sbx", pex_dir=built, nats_port=None)
    player: Player | None = None
    try:
        assert sandbox.up(), f"services not ready; logs in {tmp_path / 'sbx' / 'logs'}"
        api = sandbox.api()
        core = client.CoreV1Api(api)
        binpack.deploy(api, state_mib=STATE_MIB)

        def pods() -> dict[str, Any]:
            return binpack.pods(api)

        wait_for(lambda: binpack.ready_to_plan(api), "pods running, nodes and movable pods labeled")
        before = binpack.placement(api)
        assert sandbox.topology is not None and sandbox.cluster is not None
        player = Player(sandbox.topology.client.name, before["game-0"][1], tmp_path / "player").start()

        # The planner was started dry (the cluster was empty); now it acts.
        sandbox.cluster.restart(
            "evictor-planner",
            {"CLM_DRY_RUN": "false", "CLM_INTERVAL_SECONDS": "2", "CLM_SETTLE_SECONDS": "1"},
        )

        try:
            wait_for(
                lambda: binpack.drained(api),
                f"{binpack.DRAINED} emptied: its pods moved or evicted",
                timeout=180,
            )
        except AssertionError as exc:
            details = binpack.describe(api) + "\n" + log_excerpts(tmp_path / "sbx" / "logs")
            raise AssertionError(f"{exc}\n{details}") from None
        drained_events = wait_for(
            lambda: asyncio.run(
                fetch_from_stream(
                    sandbox.nats_url, subjects.node_drained(binpack.DRAINED), streams.EVENTS.name, 1, 3
                )
            ),
            "NodeDrained published",
        )
        assert drained_events[0].subject == subjects.node_drained(binpack.DRAINED)

        result = player.finish()
        player = None
        assert result.get("error") is None, result
        assert result["answers"] > 0 and result["in_order"], result
        assert result["hash"] == expected_hash(STATE_MIB, int(result["answers"])), "the game state diverged"

        rows = binpack.outcome_rows(before, binpack.placement(api))
        assert binpack.as_expected(rows), rows  # moved live with their IPs, evicted, stayed
        now = pods()
        for source, clone in binpack.MIGRATED.items():  # the plan's best fit: the fullest node with room
            assert now[clone].spec.node_name in ("sbx-2", "sbx-3"), f"{clone} on {now[clone].spec.node_name}"
            if source != clone:
                assert source not in now, f"source pod {source} deleted after its migration"
        for name in binpack.STAY:
            assert now[name].status.phase == "Running"
        assert core.read_node(binpack.DRAINED).spec.unschedulable is True
        assert (
            not core.read_node("sbx-2").spec.unschedulable and not core.read_node("sbx-3").spec.unschedulable
        )

        check_migrations(api, sandbox.nats_url)
    finally:
        if player is not None:
            player.finish(timeout=5)
        sandbox.down()


def check_migrations(api: client.ApiClient, nats_url: str) -> None:
    """One Migration per moved pod, Finished, its clone named per the seed, its events the
    documented sequence on NATS and as Kubernetes Events on it, one to one, in order."""
    core = client.CoreV1Api(api)

    def ended() -> list[dict[str, Any]]:
        found = client.CustomObjectsApi(api).list_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, binpack.NAMESPACE, protocol.PLURAL
        )["items"]
        return found if all(protocol.is_terminal((m.get("status") or {}).get("phase")) for m in found) else []

    # The pods can be in place before their moves end: a StatefulSet pod's namesake runs on its
    # destination from its restore, while the move still commits the network and cleans up.
    migrations = wait_for(ended, "every Migration finished or failed")
    assert sorted(m["spec"]["podName"] for m in migrations) == sorted(binpack.MIGRATED)
    events = core.list_namespaced_event(binpack.NAMESPACE).items
    nats_events = asyncio.run(
        fetch_from_stream(nats_url, subjects.ALL_MIGRATION_EVENTS, streams.EVENTS.name, 20, 3)
    )
    for m in migrations:
        name = m["metadata"]["name"]
        assert m["status"]["phase"] == "Finished", m["status"]
        clone = binpack.MIGRATED[m["spec"]["podName"]]
        assert m["status"]["clonePod"] == clone
        # The planner chose the destination; the clone runs there.
        assert (
            core.read_namespaced_pod(clone, binpack.NAMESPACE).spec.node_name == m["spec"]["destinationNode"]
        )
        recorded = sorted(
            (e for e in events if e.involved_object.kind == "Migration" and e.involved_object.name == name),
            key=lambda e: e.metadata.name,  # the coordinator names them in sequence
        )
        assert [e.reason for e in recorded] == SEQUENCE, name
        prefix = subjects.join(subjects.EVENTS_PREFIX, "migration", binpack.NAMESPACE, name) + "."
        mine = [msg for msg in nats_events if msg.subject.startswith(prefix)]
        published = [MIGRATION_EVENT_ADAPTER.validate_json(msg.data) for msg in mine]
        assert [e.kind for e in published] == SEQUENCE, name
