"""The migration runner's paths with the API and the agents replaced by recording fakes
(the real ones are in tests/integration/test_coordinator.py)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from clm.contracts import (
    AgentKind,
    CheckpointCommand,
    NetworkCommand,
    NodeCapabilities,
    StepProgress,
    StepResult,
    step_result_for,
)
from clm.contracts.base import Message
from services.coordinator.runner import MigrationRunner, RunnerConfig
from tests.kit import builders as b

SOURCE, DEST = "node-a", "node-b"
CRD = (
    Path(__file__).resolve().parents[2]
    / "deploy"
    / "kustomize"
    / "base"
    / "crds"
    / "migrations.live.cast.ai.yaml"
)
STATUS_FIELDS = set(
    yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]["properties"]
)


class FakeKube:
    def __init__(self, pod: dict[str, Any], *, refuse_pods: bool = False) -> None:
        self.pods = {pod["metadata"]["name"]: pod}
        self.events: list[tuple[int, str]] = []
        self.evicted: list[str] = []
        self.refuse_pods = refuse_pods
        self.kubelet = False  # a kubelet reports the pods created Running
        # Shared with FakeAgents.sent: API writes and agent steps in one order.
        self.timeline: list[tuple[str, str, str]] = []
        self.nodes: list[dict[str, Any]] = []
        # Every status.message written, in order.
        self.messages: list[str] = []

    def patch_status(self, m: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        # An API server prunes what the CRD's schema does not declare: such a field would be
        # gone after a restart, so writing one is a bug.
        unknown = set(status) - STATUS_FIELDS
        assert not unknown, f"status fields missing from the Migration CRD's schema: {sorted(unknown)}"
        if status.get("message") and (not self.messages or self.messages[-1] != status["message"]):
            self.messages.append(status["message"])
        return {**m, "status": copy.deepcopy(status)}

    def record_event(self, m: dict[str, Any], sequence: int, reason: str, kind: str, message: str) -> None:
        self.events.append((sequence, reason))

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.pods.get(name))

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes

    def list_pods(self) -> list[dict[str, Any]]:
        return list(self.pods.values())

    def pod_names(self, namespace: str) -> set[str]:
        return set(self.pods)

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        if self.refuse_pods:
            raise RuntimeError("admission webhook denied the request")
        if self.kubelet:  # it starts the pod and reports it
            body = {**body, "status": {"phase": "Running", "podIP": "10.0.0.9"}}
        self.pods[body["metadata"]["name"]] = body
        self.timeline.append(("kube", "create-pod", body["metadata"]["name"]))

    def set_pod_running(self, namespace: str, name: str, ip: str | None) -> None:
        self.pods[name].setdefault("status", {}).update(phase="Running", podIP=ip)

    def delete_pod(self, namespace: str, name: str) -> None:
        if self.pods.pop(name, None) is not None:
            self.timeline.append(("kube", "delete-pod", name))

    def evict_pod(self, namespace: str, name: str) -> str:
        self.evicted.append(name)
        self.pods.pop(name, None)
        return "evicted"


class FakeAgents:
    def __init__(
        self,
        fail: dict[str, str] | None = None,
        round_pages: list[int] | None = None,
        round_dirtied: list[int] | None = None,
    ) -> None:
        # "agent:step" fails every such step; "checkpoint:pre-dump:N" only round N.
        self.fail = fail or {}
        # Pre-copy: the pages each round writes (sent at 100 MiB/s), and the pages the pod
        # wrote meanwhile as the agent counts them (none given: not counted).
        self.round_pages = round_pages or []
        self.round_dirtied = round_dirtied or []
        self.sent: list[tuple[str, str, str]] = []
        self.strategies: dict[str, str] = {}
        self.rounds: list[int] = []
        # step -> what runs while the agent is at it (e.g. its progress reaching the runner).
        self.during: dict[str, Callable[[Any], Awaitable[None]]] = {}

    async def send(self, command: CheckpointCommand | NetworkCommand, timeout: float) -> StepResult:
        agent = AgentKind.CHECKPOINT if isinstance(command, CheckpointCommand) else AgentKind.NETWORK
        self.sent.append((agent, str(command.step), command.node))
        round_ = command.round if isinstance(command, CheckpointCommand) else None
        if isinstance(command, CheckpointCommand):
            self.strategies[str(command.step)] = str(command.strategy)
        if str(command.step) in self.during:
            await self.during[str(command.step)](command)
        error = self.fail.get(f"{agent}:{command.step}") or self.fail.get(f"{agent}:{command.step}:{round_}")
        details: dict[str, float | int | str | bool] = (
            {"bytes": 123, "pages_written": 7} if command.step in ("dump", "pre-dump") else {}
        )
        if command.step == "pre-dump" and round_ is not None:
            self.rounds.append(round_)
            if self.round_pages:
                pages = self.round_pages[min(round_, len(self.round_pages)) - 1]
                details = {
                    "pages_written": pages,
                    "bytes": pages * 4096,
                    "transfer_seconds": pages * 4096 / 100 / 2**20,
                }
            if self.round_dirtied:
                details["pages_dirtied_since"] = self.round_dirtied[min(round_, len(self.round_dirtied)) - 1]
                details["dirtied_seconds"] = 1.0
        return step_result_for(
            command,
            agent=agent,
            ok=error is None,
            duration_seconds=float(details.get("transfer_seconds", 0.05)) + 0.05,
            error=error,
            details=details,
        )


def caps(
    node: str, *, tracking: bool = False, post_copy: bool = False, kubelet_restores: bool = False
) -> NodeCapabilities:
    return NodeCapabilities(
        node=node,
        agent_version="t",
        arch="amd64",
        probe_ok=True,
        dirty_memory_tracking=tracking,
        cpuinfo_image_b64="AA==",
        post_copy=post_copy,
        post_copy_problem=None if post_copy else "userfaultfd is unavailable",
        clones_restored_by_kubelet=kubelet_restores,
    )


def make(
    fallback: str = "evict",
    strategy: str = "auto",
    *,
    tracking: bool = False,
    post_copy: bool = False,
    refuse_pods: bool = False,
    fail: dict[str, str] | None = None,
    owner: str = "ReplicaSet",
    kubelet_restores: bool = False,
    round_pages: list[int] | None = None,
    round_dirtied: list[int] | None = None,
    config: RunnerConfig | None = None,
) -> tuple[MigrationRunner, FakeKube, FakeAgents, list[Message]]:
    pod = {
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "uid": "pod-uid-1",
            "ownerReferences": [
                {
                    "kind": owner,
                    "name": "web-abc",
                    "controller": True,
                    "uid": "rs-1",
                    "apiVersion": "apps/v1",
                }
            ],
        },
        "spec": {"nodeName": SOURCE, "containers": [{"name": "app", "image": "x"}]},
        "status": {"podIP": "10.0.0.9"},
    }
    kube, agents, published = (
        FakeKube(pod, refuse_pods=refuse_pods),
        FakeAgents(fail, round_pages, round_dirtied),
        [],
    )
    kube.kubelet = kubelet_restores
    kube.timeline = agents.sent

    async def publish(message: Message) -> None:
        published.append(message)

    async def capabilities(node: str) -> NodeCapabilities:
        return caps(node, tracking=tracking, post_copy=post_copy, kubelet_restores=kubelet_restores)

    migration = {
        "metadata": {"name": "mig-1", "namespace": "shop", "uid": "mig-uid-1", "generation": 1},
        "spec": {"podName": "web-0", "destinationNode": DEST, "strategy": strategy, "fallback": fallback},
    }
    runner = MigrationRunner(
        migration,
        kube=kube,  # type: ignore[arg-type]  # a recording fake of KubeGateway
        send=agents.send,
        capabilities=capabilities,
        publish=publish,
        config=config or RunnerConfig(step_timeout=5),
    )
    return runner, kube, agents, published


def kinds(published: list[Message]) -> list[str]:
    return [m.kind for m in published]


async def test_success_sends_the_steps_in_order_and_moves_the_pod() -> None:
    runner, kube, agents, published = make()
    assert await runner.run() == "Finished"
    assert agents.sent == [
        ("network", "prepare", DEST),
        ("checkpoint", "check-cpu", DEST),
        ("kube", "create-pod", "web-0-clone-1"),
        ("checkpoint", "dump", SOURCE),
        ("checkpoint", "restore", DEST),
        ("network", "commit", SOURCE),
        ("network", "commit", DEST),
        # The pod runs on B: its memory is all in place before the source goes.
        ("checkpoint", "fill", DEST),
        ("checkpoint", "finalize", SOURCE),
        ("network", "release", SOURCE),
        ("kube", "delete-pod", "web-0"),  # the source object, once the clone is the pod
    ]
    assert kinds(published) == ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]
    assert kube.events == [(1, "PreDumpSkipped"), (2, "PodCreateFinished"), (3, "MigrationFinished")]
    assert set(kube.pods) == {"web-0-clone-1"}
    clone = kube.pods["web-0-clone-1"]
    assert (
        clone["spec"]["nodeName"] == DEST
        and clone["metadata"]["annotations"]["cast.ai/restore"] == "shop/web-0"
    )
    assert clone["metadata"]["ownerReferences"][0]["name"] == "web-abc"


async def test_a_failed_pre_dump_continues_as_stop_and_copy() -> None:
    runner, _, agents, published = make(
        strategy="pre-copy", tracking=True, fail={"checkpoint:pre-dump": "dirty tracking broke"}
    )
    assert await runner.run() == "Finished"
    assert kinds(published) == [
        "PreDumpFailed",
        "MigrationReconfigured",
        "PodCreateFinished",
        "MigrationFinished",
    ]
    assert published[1].strategy == "stop-and-copy"  # type: ignore[attr-defined]  # a field of that event kind
    assert ("checkpoint", "dump", SOURCE) in agents.sent


async def test_pre_copy_rounds_go_on_while_they_shrink_and_each_is_reported() -> None:
    runner, _, agents, published = make(strategy="pre-copy", tracking=True, round_pages=[65_536, 8_192, 900])
    assert await runner.run() == "Finished"
    assert agents.rounds == [1, 2, 3]
    assert kinds(published) == [
        "PreDumpFinished",
        "PreDumpFinished",
        "PreDumpFinished",
        "PodCreateFinished",
        "MigrationFinished",
    ]
    assert [m.pages for m in published[:3]] == [65_536, 8_192, 900]  # type: ignore[attr-defined]
    assert [r["pages"] for r in runner.status["preDumpRounds"]] == [65_536, 8_192, 900]
    assert "converged" in runner.status["preCopyVerdict"]
    assert agents.strategies["dump"] == agents.strategies["restore"] == "pre-copy"  # stacked on round 3


async def test_a_failed_later_round_continues_as_stop_and_copy() -> None:
    runner, _, agents, published = make(
        strategy="pre-copy",
        tracking=True,
        round_pages=[65_536, 8_192, 900],
        fail={"checkpoint:pre-dump:2": "criu pre-dump exited with 1"},
    )
    assert await runner.run() == "Finished"
    assert kinds(published)[:3] == ["PreDumpFinished", "PreDumpFailed", "MigrationReconfigured"]
    assert published[1].round == 2  # type: ignore[attr-defined]
    assert agents.strategies["dump"] == "stop-and-copy"  # the whole memory, no rounds under it


async def test_a_pod_that_does_not_converge_goes_post_copy_where_the_cluster_allows_it() -> None:
    runner, _, agents, published = make(
        strategy="pre-copy",
        tracking=True,
        post_copy=True,
        round_pages=[65_536, 60_000],
        config=RunnerConfig(step_timeout=5, post_copy_auto_min_bytes=1 << 30),
    )
    assert await runner.run() == "Finished"
    assert kinds(published)[:3] == ["PreDumpFinished", "PreDumpFinished", "MigrationReconfigured"]
    assert published[2].strategy == "post-copy"  # type: ignore[attr-defined]
    assert "continuing as post-copy" in published[2].why  # type: ignore[attr-defined]
    assert agents.strategies["dump"] == "post-copy" and ("checkpoint", "fill", DEST) in agents.sent


async def test_a_pod_that_does_not_converge_freezes_now_where_post_copy_is_not_allowed() -> None:
    # The rounds shrank to 30,000 pages, then stopped: the final dump stacks on round 3.
    runner, _, agents, published = make(
        strategy="pre-copy", tracking=True, round_pages=[65_536, 30_000, 29_000]
    )
    assert await runner.run() == "Finished"
    assert kinds(published)[:4] == ["PreDumpFinished"] * 3 + ["PodCreateFinished"]
    assert "not shrinking" in runner.status["preCopyVerdict"]
    assert agents.strategies["dump"] == agents.strategies["restore"] == "pre-copy"


async def test_rounds_that_saved_nothing_freeze_as_stop_and_copy() -> None:
    # Round 2 rewrote 60,000 of 65,536 pages: a final dump of nearly everything.
    runner, _, agents, published = make(strategy="pre-copy", tracking=True, round_pages=[65_536, 60_000])
    assert await runner.run() == "Finished"
    assert kinds(published)[:3] == ["PreDumpFinished", "PreDumpFinished", "MigrationReconfigured"]
    assert published[2].strategy == "stop-and-copy"  # type: ignore[attr-defined]
    assert agents.strategies["dump"] == agents.strategies["restore"] == "stop-and-copy"
    assert runner.status["strategy"] == "stop-and-copy"


async def test_pages_counted_during_round_one_stop_the_rounds_before_round_two() -> None:
    runner, _, agents, published = make(
        strategy="pre-copy", tracking=True, round_pages=[65_536], round_dirtied=[64_000]
    )
    assert await runner.run() == "Finished"
    assert agents.rounds == [1]
    assert kinds(published)[:2] == ["PreDumpFinished", "MigrationReconfigured"]
    assert "64000 written by the pod meanwhile" in published[0].message  # type: ignore[attr-defined]
    assert runner.status["preDumpRounds"][0]["pagesDirtiedSince"] == 64_000
    assert agents.strategies["dump"] == "stop-and-copy"


async def test_few_pages_counted_during_round_one_converge_and_stack_on_it() -> None:
    runner, _, agents, _ = make(strategy="pre-copy", tracking=True, round_pages=[65_536], round_dirtied=[300])
    assert await runner.run() == "Finished"
    assert agents.rounds == [1]
    assert "converged" in runner.status["preCopyVerdict"]
    assert agents.strategies["dump"] == "pre-copy"


async def test_a_refused_clone_pod_fails_before_any_freeze_and_evicts() -> None:
    runner, kube, agents, published = make(fallback="evict", refuse_pods=True)
    assert await runner.run() == "Failed"
    assert kinds(published) == ["PreDumpSkipped", "PodCreateFailed", "MigrationFailed"]
    assert ("checkpoint", "dump", SOURCE) not in agents.sent
    failed = published[-1]
    assert failed.stage == "pod-create" and failed.fallback == "evict"  # type: ignore[attr-defined]  # a field of that event kind
    assert kube.evicted == ["web-0"]
    assert ("checkpoint", "abort", SOURCE) in agents.sent and ("network", "abort", DEST) in agents.sent


@pytest.mark.parametrize("fallback", ["restore-on-source", "none"])
async def test_a_failed_restore_rolls_back_destination_first(fallback: str) -> None:
    runner, kube, agents, published = make(fallback=fallback, fail={"checkpoint:restore": "criu said no"})
    assert await runner.run() == "Failed"
    aborts = [s for s in agents.sent if s[1] == "abort"]
    assert aborts == [
        ("checkpoint", "abort", DEST),
        ("checkpoint", "abort", SOURCE),
        ("network", "abort", DEST),
    ]
    assert kinds(published)[-1] == "MigrationFailed" and published[-1].stage == "restore"  # type: ignore[attr-defined]  # a field of that event kind
    assert set(kube.pods) == {"web-0"} and kube.evicted == []  # clone removed, source kept


async def test_post_copy_is_reconfigured_to_stop_and_copy_where_a_node_cannot() -> None:
    runner, _, _, published = make(strategy="post-copy")
    assert await runner.run() == "Finished"
    assert kinds(published)[:2] == ["PreDumpSkipped", "MigrationReconfigured"]
    assert "userfaultfd is unavailable" in published[1].why  # type: ignore[attr-defined]  # a field of that event kind
    assert runner.status["strategy"] == "stop-and-copy"


async def test_post_copy_commits_at_the_resume_and_waits_for_the_pages() -> None:
    runner, _, agents, published = make(strategy="post-copy", post_copy=True)
    assert await runner.run() == "Finished"
    assert runner.status["strategy"] == "post-copy" and runner.status["committed"] is True
    steps = [(agent, step) for agent, step, _ in agents.sent if agent in ("checkpoint", "network")]
    assert steps == [
        ("network", "prepare"),
        ("checkpoint", "check-cpu"),
        ("checkpoint", "dump"),
        ("checkpoint", "restore"),
        ("network", "commit"),
        ("network", "commit"),
        ("checkpoint", "fill"),
        ("checkpoint", "finalize"),
        ("network", "release"),
    ]
    assert kinds(published)[-1] == "MigrationFinished"


async def test_auto_picks_post_copy_for_a_large_pod_where_the_cluster_allows_it() -> None:
    runner, kube, agents, published = make(post_copy=True)
    kube.pods["web-0"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "2Gi"}}
    runner.config.post_copy_auto_min_bytes = 1 << 30
    assert await runner.run() == "Finished"
    assert runner.status["strategy"] == "post-copy" and runner.status["podMemoryBytes"] == 2 << 30
    assert ("checkpoint", "fill", DEST) in agents.sent
    # Not allowed (the default): auto keeps to stop-and-copy for the same pod.
    runner, kube, _, _ = make(post_copy=True)
    kube.pods["web-0"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "2Gi"}}
    assert await runner.run() == "Finished" and runner.status["strategy"] == "stop-and-copy"


async def test_a_broken_page_stream_after_the_resume_fails_without_rolling_back() -> None:
    runner, kube, agents, published = make(
        strategy="post-copy", post_copy=True, fail={"checkpoint:fill": "the page stream broke"}
    )
    assert await runner.run() == "Failed"
    # Nothing to roll back to (the source had no memory of its own): the source is cleaned.
    assert not [s for s in agents.sent if s[1] == "abort"]
    assert ("checkpoint", "finalize", SOURCE) in agents.sent and ("network", "release", SOURCE) in agents.sent
    failed = published[-1]
    assert failed.kind == "MigrationFailed" and failed.stage == "fill"  # type: ignore[attr-defined]  # a field of that event kind
    assert "page stream broke" in runner.status["failureReason"]
    # No copy can run again: the clone and the frozen source both go (not an eviction a
    # disruption budget could refuse), and the controller starts the pod afresh.
    assert kube.evicted == [] and set(kube.pods) == set(), kube.pods
    assert ("kube", "delete-pod", "web-0") in kube.timeline
    assert "its controller starts it afresh" in runner.status["message"]


async def test_a_local_fill_that_breaks_after_the_network_commit_fails_stop_and_copy_forward() -> None:
    # Stop-and-copy's lazy restore resumed the pod and the network moved; its memory comes
    # from the destination's own images. A daemon that dies there stops the pod: past the
    # commit, the source is cleaned (its state is older than what clients saw) and the
    # fallback follows.
    runner, kube, agents, published = make(fail={"checkpoint:fill": "the lazy-pages daemon exited 1"})
    assert await runner.run() == "Failed"
    assert not [s for s in agents.sent if s[1] == "abort"]
    assert agents.sent.index(("network", "commit", DEST)) < agents.sent.index(("checkpoint", "fill", DEST))
    assert ("checkpoint", "finalize", SOURCE) in agents.sent
    failed = published[-1]
    assert failed.kind == "MigrationFailed" and failed.stage == "fill"  # type: ignore[attr-defined]  # a field of that event kind
    assert runner.status["freezeSeconds"] >= 0 and runner.status["committed"] is True


async def test_a_missing_pod_fails_with_the_reason() -> None:
    runner, kube, agents, published = make()
    kube.pods.clear()
    assert await runner.run() == "Failed"
    assert "does not exist" in runner.status["failureReason"]
    assert agents.sent == []  # nothing to undo: nothing was resolved
    assert kinds(published) == ["MigrationFailed"]


async def test_a_statefulset_pod_keeps_its_name_created_after_the_commit() -> None:
    runner, kube, agents, published = make(owner="StatefulSet")
    assert await runner.run() == "Finished"
    assert kinds(published) == ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]
    assert set(kube.pods) == {"web-0"}  # the namesake, on the destination
    assert kube.pods["web-0"]["spec"]["nodeName"] == DEST
    assert kube.pods["web-0"]["metadata"]["annotations"]["cast.ai/restore"] == "shop/web-0"
    assert runner.status["clonePod"] == "web-0"
    # Created only after the commit point (the source object had to go first).
    timeline = agents.sent
    assert timeline.index(("kube", "create-pod", "web-0")) > timeline.index(("network", "commit", DEST))


async def test_on_kubelet_nodes_a_statefulset_namesake_exists_before_its_restore() -> None:
    runner, kube, agents, published = make(owner="StatefulSet", kubelet_restores=True)
    assert await runner.run() == "Finished"
    assert agents.sent == [
        ("network", "prepare", DEST),
        ("checkpoint", "check-cpu", DEST),
        ("checkpoint", "dump", SOURCE),
        # The commit point: the source object goes, the namesake comes, kubelet restores it.
        ("kube", "delete-pod", "web-0"),
        ("kube", "create-pod", "web-0"),
        ("checkpoint", "restore", DEST),
        ("network", "commit", SOURCE),
        ("network", "commit", DEST),
        # The pod runs on B: its memory is all in place before the source goes.
        ("checkpoint", "fill", DEST),
        ("checkpoint", "finalize", SOURCE),
        ("network", "release", SOURCE),
    ]
    assert runner.status["commitPoint"] == "source-deleted" and runner.status["committed"] is True
    assert kube.pods["web-0"]["spec"]["nodeName"] == DEST and "freezeSeconds" in runner.status
    assert kinds(published) == ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]


async def test_on_kubelet_nodes_the_freeze_waits_until_kubelet_creates_the_clone() -> None:
    # kubelet's pod start-up (sandbox, network, image) stays out of the freeze.
    runner, kube, agents, _ = make(kubelet_restores=True)
    assert await runner.run() == "Finished"
    timeline = agents.sent
    created = timeline.index(("kube", "create-pod", "web-0-clone-1"))
    assert created < timeline.index(("checkpoint", "await-clone", DEST))
    assert timeline.index(("checkpoint", "await-clone", DEST)) < timeline.index(
        ("checkpoint", "dump", SOURCE)
    )


async def test_nodes_that_restore_clones_themselves_are_not_asked_to_await_one() -> None:
    runner, _, agents, _ = make()
    assert await runner.run() == "Finished"
    assert not [s for s in agents.sent if s[1] == "await-clone"]


async def test_on_kubelet_nodes_the_clone_status_is_kubelets_to_write() -> None:
    runner, kube, _, _ = make(kubelet_restores=True)
    kube.set_pod_running = None  # type: ignore[assignment]  # never called: kubelet owns the status
    assert await runner.run() == "Finished"
    assert kube.pods["web-0-clone-1"]["status"]["phase"] == "Running"


async def test_a_namesake_that_fails_to_restore_is_deleted_and_nothing_rolls_back_to_the_source() -> None:
    runner, kube, agents, published = make(
        owner="StatefulSet", kubelet_restores=True, fail={"checkpoint:restore": "criu said no"}
    )
    assert await runner.run() == "Failed"
    after = agents.sent[agents.sent.index(("checkpoint", "restore", DEST)) + 1 :]
    assert after == [
        ("checkpoint", "abort", DEST),
        ("network", "abort", DEST),
        ("checkpoint", "finalize", SOURCE),  # the source's images and lock rules go
        ("network", "release", SOURCE),
        ("kube", "delete-pod", "web-0"),  # the namesake never ran: its StatefulSet makes it anew
    ]
    assert kube.pods == {} and kube.evicted == []
    failed = published[-1]
    assert failed.kind == "MigrationFailed" and failed.stage == "restore"  # type: ignore[attr-defined]  # a field of that event kind
    assert "StatefulSet creates the pod afresh" in runner.status["message"]


async def test_a_coordinator_restarted_after_the_deletion_never_deletes_the_namesake() -> None:
    runner, kube, agents, _ = make(owner="StatefulSet", kubelet_restores=True)
    assert await runner.run() == "Finished"
    again = MigrationRunner(
        {**runner.record.handle.obj, "status": {**runner.status, "phase": "Finalizing"}},
        kube=kube,  # type: ignore[arg-type]  # a recording fake of KubeGateway
        send=agents.send,
        capabilities=runner.capabilities,
        publish=runner.record.publish,
        config=runner.config,
    )
    again.status.pop("restoreSeconds", None)
    again.status.pop("freezeSeconds", None)
    assert await again.run() == "Finished"
    assert kube.pods["web-0"]["spec"]["nodeName"] == DEST
    assert ("kube", "delete-pod", "web-0") not in agents.sent[
        agents.sent.index(("network", "release", SOURCE)) :
    ]


async def test_without_a_fallback_in_the_spec_the_label_matrix_decides() -> None:
    runner, kube, _, published = make(fail={"checkpoint:restore": "criu said no"})
    del runner.spec["fallback"]
    kube.pods["web-0"]["metadata"]["labels"] = {
        "live.cast.ai/migration-enabled": "true",
        "autoscaling.cast.ai/removal-disabled": "true",
    }
    assert await runner.run() == "Failed"
    assert published[-1].fallback == "restore-on-source"  # type: ignore[attr-defined]  # a field of that event kind
    assert kube.evicted == []


async def test_without_a_destination_the_coordinator_chooses_one() -> None:
    runner, kube, agents, _ = make()
    del runner.spec["destinationNode"]
    kube.nodes = [b.node(SOURCE), b.node("node-c", cpu="8"), b.node("node-d", cpu="2")]
    assert await runner.run() == "Finished"
    assert runner.status["destinationNode"] == "node-d"  # the fullest that fits
    assert ("checkpoint", "restore", "node-d") in agents.sent


async def test_without_a_destination_and_no_room_it_fails_with_the_reasons() -> None:
    runner, kube, agents, _ = make()
    del runner.spec["destinationNode"]
    kube.nodes = [b.node(SOURCE), b.node("node-c", migration_enabled=False)]
    assert await runner.run() == "Failed"
    assert "no node can take the pod" in runner.status["failureReason"]
    assert "node-c" in runner.status["failureReason"] and agents.sent == []


async def test_the_finished_move_carries_its_freeze_phase_by_phase() -> None:
    runner, _, _, published = make()
    assert await runner.run() == "Finished"
    phases = [p["phase"] for p in runner.status["waterfall"]]
    assert phases[0] == "freeze" and phases[-2:] == ["network_commit", "coordination"]
    commit = next(p for p in runner.status["waterfall"] if p["phase"] == "network_commit")
    assert commit["seconds"] == 0.2  # withdraw and announce, 0.1 s each
    finished = published[-1]
    assert "freeze_coordination" in finished.phases  # type: ignore[attr-defined]  # a field of that event kind


async def test_the_status_shows_the_transfer_rising_at_a_bounded_rate() -> None:
    runner, _, agents, _ = make(config=RunnerConfig(step_timeout=5, progress_every_seconds=10))
    clock = [100.0]
    runner._clock = lambda: clock[0]
    writes: list[dict[str, Any]] = []
    patch = runner.record.patch

    async def spy(**fields: Any) -> None:
        if "progress" in fields:
            writes.append(dict(fields["progress"]))
        await patch(**fields)

    runner.record.patch = spy  # type: ignore[method-assign]  # a spy on the status writes
    seen: list[float] = []

    async def transfer(command: CheckpointCommand) -> None:
        for done in range(0, 1001, 100):
            clock[0] += 1.0
            await runner.on_progress(progress_of(command, done=done, total=1000, elapsed=1 + done / 100))
            seen.append(runner.progress.percent)
        # Another migration's progress is not this one's.
        await runner.on_progress(progress_of(command, done=5, total=1000, elapsed=1.0, uid="another"))

    agents.during["dump"] = transfer
    assert await runner.run() == "Finished"
    assert seen == sorted(seen) and seen[0] < seen[-1] <= 90.0
    # 11 reports over 11 s, written at most every 10 s: the first and the one 10 s later.
    assert [w["bytesDone"] for w in writes] == [0, 1000]
    assert writes[0]["step"] == "dump" and "frozenSeconds" in writes[0]
    final = runner.status["progress"]
    assert final["percent"] == 100.0 and final["bytesMoved"] == 1000


def progress_of(
    command: CheckpointCommand, *, done: int, total: int, elapsed: float, uid: str | None = None
) -> StepProgress:
    return StepProgress(
        namespace=command.migration.namespace,
        migration=command.migration.name,
        migration_uid=uid or command.migration.uid,
        agent=AgentKind.CHECKPOINT,
        node=command.node,
        step=str(command.step),
        bytes_done=done,
        bytes_total=total,
        elapsed_seconds=elapsed,
    )


async def test_a_migration_deleted_before_the_commit_point_is_cancelled_and_the_pod_stays() -> None:
    runner, kube, agents, published = make(fallback="evict", strategy="pre-copy", tracking=True)

    async def deleted(_command: Any) -> None:
        runner.cancel()  # what the coordinator's watch does

    agents.during["pre-dump"] = deleted
    assert await runner.run() == "Failed"
    assert agents.rounds == [1], "no round after the cancel"
    assert ("checkpoint", "dump", SOURCE) not in agents.sent
    assert ("checkpoint", "abort", SOURCE) in agents.sent and ("checkpoint", "abort", DEST) in agents.sent
    failed = published[-1]
    assert kinds(published)[-1] == "MigrationFailed"
    assert failed.stage == "cancel" and failed.fallback == "none"  # type: ignore[attr-defined]  # a field of that event kind
    assert kube.evicted == [], "a cancel is no failure: no fallback"
    assert runner.status["failedStage"] == "cancel" and "runs on" in runner.status["message"]
    assert any(m.startswith("cancelling:") for m in kube.messages)


async def test_a_deletion_past_the_commit_point_waits_for_the_finish() -> None:
    runner, kube, agents, _ = make(fallback="evict")

    async def deleted(_command: Any) -> None:
        runner.cancel()

    agents.during["commit"] = deleted  # the network commit: the commit point
    assert await runner.run() == "Finished"
    assert ("checkpoint", "finalize", SOURCE) in agents.sent
    assert any("the deletion waits for the move to finish" in m for m in kube.messages)


def test_the_finalizer_is_added_with_the_lease_and_dropped_with_it() -> None:
    from services.coordinator.kube import FINALIZER, finalizers_with

    fresh = {"metadata": {"finalizers": ["someone-else"]}}
    assert finalizers_with(fresh, ours=True) == ["someone-else", FINALIZER]
    held = {"metadata": {"finalizers": ["someone-else", FINALIZER]}}
    assert finalizers_with(held, ours=True) is None
    assert finalizers_with(held, ours=False) == ["someone-else"]
    # The API refuses new finalizers on an object being deleted.
    assert finalizers_with({"metadata": {"deletionTimestamp": "2026-12-02T18:00:00Z"}}, ours=True) is None


async def test_a_cancel_does_not_wait_for_the_step_in_flight() -> None:
    runner, kube, agents, published = make(fallback="evict")

    async def deleted_during_a_dump_that_never_answers(_command: Any) -> None:
        runner.cancel()
        await asyncio.Event().wait()

    agents.during["dump"] = deleted_during_a_dump_that_never_answers
    assert await asyncio.wait_for(runner.run(), timeout=5) == "Failed"
    assert runner.status["failedStage"] == "cancel" and kube.evicted == []
    assert ("checkpoint", "abort", SOURCE) in agents.sent
    assert published[-1].fallback == "none"  # type: ignore[attr-defined]  # a field of that event kind


async def test_a_statefulset_namesake_whose_pages_broke_goes_for_its_controller_to_start_afresh() -> None:
    runner, kube, agents, published = make(
        owner="StatefulSet",
        kubelet_restores=True,
        strategy="post-copy",
        post_copy=True,
        fail={"checkpoint:fill": "the page stream broke"},
    )
    assert await runner.run() == "Failed"
    # The source went at the commit point; the namesake, stopped without its memory, goes too.
    deletions = [t for t in kube.timeline if t[:2] == ("kube", "delete-pod")]
    assert deletions == [("kube", "delete-pod", "web-0")] * 2, kube.timeline
    assert set(kube.pods) == set() and kube.evicted == []
    assert published[-1].kind == "MigrationFailed"
