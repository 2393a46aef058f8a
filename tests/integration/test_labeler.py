"""The labeler process against the Kubernetes API emulator and a real NATS server.

- pod labels follow eligibility as pods change (`kubectl debug` adds a TTY container, a
  StatefulSet rolls a hostPath volume in and out, a user adds the opt-out label or strips
  the label by hand), other labels are never touched, the reasons are written to an
  annotation and published on NATS;
- node labels follow the checkpoint agents' reports (working, broken, gone quiet);
- two replicas share the pods (each pod patched once), and a restart patches nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes import client, watch

from clm.contracts import NodeCapabilities, PodEligibilityChanged, decode, encode, streams, subjects
from clm.policy import names
from services.labeler.labels import INELIGIBLE_ANNOTATION
from tests.integration.support import fetch_from_stream, http_get, pex_dir
from tests.integration.support import wait_for as _wait_for
from tests.kit import builders as b
from tests.kit.agents import AgentProcess
from tests.kit.nats_server import NatsServer
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import EmulatorThread, api_client


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    return _wait_for(check, what, timeout, every=0.05)


NS = "games"
TTL = 3.0


@dataclass
class Env:
    nats: NatsServer
    emulator: EmulatorThread
    tmp: Path
    core: client.CoreV1Api
    apps: client.AppsV1Api
    procs: list[AgentProcess]

    def labeler(self, shard: int = 0, shards: int | None = 1, tag: str = "") -> AgentProcess:
        """A labeler process: replica `shard` of a fixed `shards`, or (shards=None) one that
        finds the other replicas in NATS."""
        built = pex_dir()
        split = (
            {"CLM_SHARD": str(shard), "CLM_SHARDS": str(shards)}
            if shards
            else {"CLM_MEMBERSHIP_SECONDS": "0.5"}
        )
        proc = AgentProcess(
            "labeler",
            "-",
            pex=built / "clm-labeler.pex" if built else None,
            log_path=self.tmp / f"labeler-{shard}{tag}.log",
            env={
                "CLM_NATS_URL": self.nats.url,
                "CLM_KUBECONFIG": str(self.tmp / "kubeconfig"),
                **split,
                "CLM_NODE_CAPABILITIES_TTL_SECONDS": str(TTL),
                "CLM_NODE_CHECK_SECONDS": "0.3",
            },
        ).start()
        self.procs.append(proc)
        return proc.wait_ready()

    def pod(self, name: str, *, labels: dict[str, str] | None = None, **spec: Any) -> None:
        body = {
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "game:1"}], **spec},
        }
        self.core.create_namespaced_pod(NS, body)
        self.core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running"}})

    def labels(self, name: str) -> dict[str, str]:
        return self.core.read_namespaced_pod(name, NS).metadata.labels or {}

    def note(self, name: str) -> str | None:
        return (self.core.read_namespaced_pod(name, NS).metadata.annotations or {}).get(INELIGIBLE_ANNOTATION)

    def labeled(self, name: str) -> bool:
        return self.labels(name).get(names.MIGRATION_ENABLED) == "true"

    def node_labeled(self, name: str) -> bool:
        return (self.core.read_node(name).metadata.labels or {}).get(names.MIGRATION_ENABLED) == "true"


@pytest.fixture
def env(nats_server: NatsServer, tmp_path: Path) -> Iterator[Env]:
    emulator = EmulatorThread().start()
    (tmp_path / "kubeconfig").write_text(kubeconfig_text(emulator.url))
    api = api_client(emulator.url)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    for name in ("n1", "n2", "n3"):
        core.create_node(b.node(name, migration_enabled=name == "n3"))
    e = Env(nats_server, emulator, tmp_path, core, client.AppsV1Api(api), [])
    try:
        yield e
    finally:
        for proc in e.procs:
            proc.stop()
        emulator.stop()


async def eligibility_events(url: str, pod: str, count: int) -> list[PodEligibilityChanged]:
    msgs = await fetch_from_stream(url, subjects.pod_eligibility(NS, pod), streams.EVENTS.name, count, 5)
    return [decode(m.data, PodEligibilityChanged) for m in msgs]


def stateful_pod(name: str, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "db"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": True}
            ],
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "db", "image": "db:1"}], "volumes": volumes},
    }


def test_pod_labels_follow_eligibility_and_say_why(env: Env) -> None:
    env.pod("solo", labels={"app": "web", "team": "blue"})
    env.pod("terminal", containers=[{"name": "sh", "image": "busybox", "tty": True, "stdin": True}])
    env.pod("keeper", labels={"app": "cache"})
    env.apps.create_namespaced_stateful_set(
        NS,
        {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db"}]}},
            },
        },
    )
    env.core.create_namespaced_pod(NS, stateful_pod("db-0", []))
    env.core.patch_namespaced_pod_status("db-0", NS, {"status": {"phase": "Running"}})
    env.labeler()

    wait_for(lambda: all(env.labeled(p) for p in ("solo", "db-0", "keeper")), "eligible pods labeled")
    assert env.labels("solo") == {"app": "web", "team": "blue", names.MIGRATION_ENABLED: "true"}
    assert env.note("solo") is None
    note = wait_for(lambda: env.note("terminal"), "the TTY pod's reasons")
    assert "tty" in note and not env.labeled("terminal")

    # `kubectl debug -it solo`: an ephemeral TTY container joins the pod.
    env.core.patch_namespaced_pod_ephemeralcontainers(
        "solo", NS, {"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox", "tty": True}]}}
    )
    wait_for(lambda: not env.labeled("solo"), "the label removed after kubectl debug")
    assert env.labels("solo") == {"app": "web", "team": "blue"}  # only ours went
    assert "debugger" in (env.note("solo") or "")
    events = asyncio.run(eligibility_events(env.nats.url, "solo", 2))
    assert [e.eligible for e in events] == [True, False]
    assert [r.code for r in events[1].reasons] == ["tty"]

    # The StatefulSet rolls out a hostPath volume (the pod is recreated), then rolls back.
    env.core.delete_namespaced_pod("db-0", NS)
    env.core.create_namespaced_pod(
        NS, stateful_pod("db-0", [{"name": "data", "hostPath": {"path": "/srv/db"}}])
    )
    env.core.patch_namespaced_pod_status("db-0", NS, {"status": {"phase": "Running"}})
    wait_for(lambda: "hostPath" in (env.note("db-0") or ""), "the hostPath reason")
    assert not env.labeled("db-0")
    env.core.delete_namespaced_pod("db-0", NS)
    env.core.create_namespaced_pod(NS, stateful_pod("db-0", []))
    env.core.patch_namespaced_pod_status("db-0", NS, {"status": {"phase": "Running"}})
    wait_for(lambda: env.labeled("db-0") and env.note("db-0") is None, "db-0 eligible again")

    # The opt-out label: still eligible (the Evictor's matrix then evicts), nothing removed.
    opt_out = {"metadata": {"labels": {names.LIVE_MIGRATION_DISABLED: "true"}}}
    env.core.patch_namespaced_pod("keeper", NS, opt_out)
    # Someone strips our label by hand: continuous assessment puts it back.
    env.core.patch_namespaced_pod("keeper", NS, {"metadata": {"labels": {names.MIGRATION_ENABLED: None}}})
    wait_for(lambda: env.labeled("keeper"), "the label restored")
    assert env.labels("keeper") == {
        "app": "cache",
        names.LIVE_MIGRATION_DISABLED: "true",
        names.MIGRATION_ENABLED: "true",
    }
    assert not env.labeled("terminal")


async def publish_capabilities(url: str, node: str, *, ok: bool) -> None:
    nc = await nats.connect(url)
    try:
        caps = NodeCapabilities(node=node, agent_version="test", arch="amd64", probe_ok=ok)
        await nc.jetstream().publish(caps.subject(), encode(caps))
    finally:
        await nc.close()


class NodeLabelWatch:
    """Every value the migration label of each node took, as the API's watch told it: a label
    that flapped off and back between two reads shows here."""

    def __init__(self, env: Env) -> None:
        self.seen: dict[str, list[bool]] = {}
        self.stopped = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._follow, args=(env,), daemon=True)

    def _follow(self, env: Env) -> None:
        try:
            for event in self._watch.stream(env.core.list_node, timeout_seconds=120):
                node = event["object"]
                labeled = (node.metadata.labels or {}).get(names.MIGRATION_ENABLED) == "true"
                history = self.seen.setdefault(node.metadata.name, [])
                if not history or history[-1] != labeled:
                    history.append(labeled)
        except Exception:
            if not self.stopped.is_set():
                raise  # a watch that broke while it mattered: the thread's error shows it
        # Once stopped, the stream ends whenever the API closes it (the test's teardown).

    def __enter__(self) -> NodeLabelWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self._watch.stop()


def reports(env: Env, node: str) -> int:
    """How many NodeCapabilities the node's agent has published so far."""

    async def count() -> int:
        nc = await nats.connect(env.nats.url)
        try:
            info = await nc.jetstream().stream_info(
                streams.EVENTS.name, subjects_filter=subjects.node_capabilities(node)
            )
            return int((info.state.subjects or {}).get(subjects.node_capabilities(node), 0))
        finally:
            await nc.close()

    return asyncio.run(count())


class Agent(threading.Thread):
    """A node's agent as the labeler hears it: a report every half second until stopped."""

    def __init__(self, env: Env, node: str, *, ok: bool) -> None:
        super().__init__(daemon=True)
        self.env, self.node, self.ok = env, node, ok
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            asyncio.run(publish_capabilities(self.env.nats.url, self.node, ok=self.ok))
            self.stopped.wait(0.5)


def test_node_labels_follow_the_agents_reports(env: Env) -> None:
    env.labeler()
    asyncio.run(publish_capabilities(env.nats.url, "n1", ok=True))
    asyncio.run(publish_capabilities(env.nats.url, "n2", ok=False))
    wait_for(lambda: env.node_labeled("n1"), "n1 labeled (working probe)")
    assert not env.node_labeled("n2")  # broken probe
    # n3 came labeled but no agent ever spoke for it: unlabeled once the grace has passed.
    wait_for(lambda: not env.node_labeled("n3"), "n3 unlabeled (no agent)", timeout=TTL + 5)

    # n2's agent is fixed and keeps reporting; n1's agent goes quiet.
    n2 = Agent(env, "n2", ok=True)
    with NodeLabelWatch(env) as labels:
        n2.start()
        wait_for(lambda: env.node_labeled("n2"), "n2 labeled (probe fixed)")
        wait_for(lambda: not env.node_labeled("n1"), "n1 unlabeled (its agent went quiet)", timeout=TTL + 5)
        # Reports for a whole TTL more: n2 stays labeled all along.
        enough = reports(env, "n2") + int(TTL / 0.5) + 2
        wait_for(lambda: reports(env, "n2") >= enough, "n2's agent reporting for a TTL", timeout=TTL * 4)
        n2.stopped.set()
        n2.join()
    assert labels.seen["n2"] == [False, True], labels.seen  # labeled once, never flapped
    asyncio.run(publish_capabilities(env.nats.url, "n2", ok=False))
    wait_for(lambda: not env.node_labeled("n2"), "n2 unlabeled (probe broke)")
    assert (env.core.read_node("n2").metadata.labels or {}).get(names.ZONE) == "us-east-1a"  # others kept


MISSING = [t for t in ("criu",) if shutil.which(t) is None]


@pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING), reason="needs root and criu for a real checkpoint agent's probe"
)
def test_a_real_checkpoint_agent_labels_its_node_and_its_death_unlabels_it(env: Env) -> None:
    built = pex_dir()
    agent = AgentProcess(
        "checkpoint-agent",
        "n1",
        pex=built / "clm-checkpoint-agent.pex" if built else None,
        log_path=env.tmp / "checkpoint-agent.log",
        env={
            "CLM_NATS_URL": env.nats.url,
            "CLM_STATE_DIR": str(env.tmp / "agent-state"),
            "CLM_IMAGE_DIR": str(env.tmp / "agent-images"),
            "CLM_RUNC_ROOT": str(env.tmp / "runc"),
            "CLM_TRANSFER_PORT": "0",
            "CLM_TRANSFER_LISTEN_HOST": "127.0.0.1",
            "CLM_CAPABILITIES_INTERVAL_SECONDS": "1",
        },
    ).start()
    env.procs.append(agent)
    agent.wait_ready()
    env.labeler()
    wait_for(lambda: env.node_labeled("n1"), "n1 labeled from the agent's probe", timeout=30)
    with NodeLabelWatch(env) as labels:
        # The agent reports every second: a TTL and more of its reports, and no flapping.
        enough = reports(env, "n1") + int(TTL) + 2
        wait_for(lambda: reports(env, "n1") >= enough, "the agent reporting for a TTL", timeout=TTL * 4)
        assert env.node_labeled("n1")
    assert labels.seen.get("n1", [True]) == [True], labels.seen
    agent.kill()
    wait_for(lambda: not env.node_labeled("n1"), "n1 unlabeled after its agent died", timeout=TTL + 5)


def counter(proc: AgentProcess, prefix: str) -> float:
    _, text = http_get(proc.port, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def patches(proc: AgentProcess) -> float:
    status, text = http_get(proc.port, "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("clm_labeler_patches_total{") and 'kind="pod"' in line
    )


def eligible_gauge(proc: AgentProcess) -> float:
    _, text = http_get(proc.port, "/metrics")
    lines = text.splitlines()
    return next(float(line.split()[1]) for line in lines if line.startswith("clm_labeler_pods_eligible"))


def test_replicas_share_pods_and_a_restart_patches_nothing(env: Env) -> None:
    count = 60
    for i in range(count):
        env.pod(f"p{i:02d}", labels={"app": "fleet"})
    replicas = [env.labeler(shard=s, shards=2) for s in range(2)]
    wait_for(
        lambda: len(env.core.list_namespaced_pod(NS, label_selector=f"{names.MIGRATION_ENABLED}=true").items)
        == count,
        "every pod labeled by one of the two replicas",
    )
    per_replica = [patches(p) for p in replicas]
    assert sum(per_replica) == count and all(n > 0 for n in per_replica), per_replica
    for proc in replicas:
        proc.stop()

    again = env.labeler(tag="-again")
    wait_for(lambda: eligible_gauge(again) == count, "the restarted labeler assessed every pod")
    # Its pass is over (every write of it done): only then is "no patch" an answer.
    wait_for(lambda: counter(again, "clm_labeler_passes_total ") >= 1, "the restarted labeler's first pass")
    assert patches(again) == 0
    events = asyncio.run(
        fetch_from_stream(env.nats.url, subjects.ALL_POD_ELIGIBILITY, streams.EVENTS.name, count + 10, 3)
    )
    assert len(events) == count  # one per pod: the restart said nothing again


def share_of(proc: AgentProcess) -> tuple[int, int] | None:
    _, text = http_get(proc.port, "/metrics")
    found = {
        line.split('of="')[1].split('"')[0]: int(float(line.split()[1]))
        for line in text.splitlines()
        if line.startswith("clm_labeler_share{")
    }
    return (found["index"], found["count"]) if len(found) == 2 else None


def labeled_count(env: Env) -> int:
    return len(env.core.list_namespaced_pod(NS, label_selector=f"{names.MIGRATION_ENABLED}=true").items)


def test_replicas_find_each_other_so_scaling_needs_no_configuration(env: Env) -> None:
    a, b = env.labeler(shards=None, tag="-a"), env.labeler(shards=None, tag="-b")
    wait_for(lambda: {share_of(a), share_of(b)} == {(0, 2), (1, 2)}, "two replicas split the pods")
    count = 40
    for i in range(count):
        env.pod(f"p{i:02d}", labels={"app": "fleet"})
    wait_for(lambda: labeled_count(env) == count, "every pod labeled by one of the two replicas")

    # Each pod is one replica's: their own eligible pods add up to the whole, both have some.
    def split() -> list[float] | None:
        owned = [eligible_gauge(a), eligible_gauge(b)]
        return owned if sum(owned) == count else None

    owned = wait_for(split, "each pod assessed by exactly one replica")
    assert all(n > 0 for n in owned), owned

    # Scaled down the hard way (the pod killed): the survivor takes every pod after the TTL,
    # finds b's pods right already and rewrites none of them.
    before = patches(a)
    b.kill()
    wait_for(lambda: share_of(a) == (0, 1), "the survivor owns every pod", timeout=10)
    wait_for(lambda: eligible_gauge(a) == count, "the survivor assessed b's pods")
    assert patches(a) == before
    for i in range(count, count + 10):
        env.pod(f"p{i:02d}", labels={"app": "fleet"})
    wait_for(lambda: labeled_count(env) == count + 10, "new pods labeled by the survivor")

    # Scaled up again: the newcomer is counted at once and takes its share.
    c = env.labeler(shards=None, tag="-c")
    wait_for(lambda: {share_of(a), share_of(c)} == {(0, 2), (1, 2)}, "the newcomer is counted")
    wait_for(lambda: eligible_gauge(a) + eligible_gauge(c) == count + 10, "the pods split again")
    assert eligible_gauge(c) > 0
    env.core.patch_namespaced_pod("p00", NS, {"metadata": {"labels": {names.MIGRATION_ENABLED: None}}})
    wait_for(lambda: labeled_count(env) == count + 10, "a label stripped by hand is put back by its owner")
