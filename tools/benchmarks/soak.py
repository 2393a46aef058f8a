"""`tools/bench soak [--faults N] [--seed S]`: migrations back and forth between the sandbox's
three nodes under load, a fault injected into each at a random step, and after each one the
checks a user would make.

The load: two stateful pods (the demo's game server and a second one), each with a player
holding one connection. The faults, from a matrix, each at a random phase of the move:

    kill:<service>       SIGKILL of the labeler, planner, coordinator, or of either node's
                         checkpoint or IP-handover agent (the whole process session, as a
                         container's death), started again at once as Kubernetes would
    restart:nats         nats-server stopped and started (JetStream keeps its streams)
    restart:api          the API emulator stopped and started from its state file
    partition            the nodes cannot reach each other: the agents' channel dropped and
                         the node namespaces' traffic to each other dropped, until the move ends
    packet-loss          5 % of the agents' channel packets dropped until the move ends
    disk-full            the destination's image directory on a 4 MiB tmpfs
    pages-cut            (post-copy and mixed only) the source agent's page traffic slowed to a
                         trickle, and the agent killed as soon as the move is committed: the
                         page stream breaks inside the risk window

After each move: every Migration is terminal with a reason; exactly one copy of each pod
runs, where the outcome says (destination if Finished, source if Failed); its player still
gets answers in order (after a failed move a dropped connection is allowed, and the player
reconnects); nothing is left behind — no pod namespace, route, CRIU lock rule, image, CRIU
process or lease that no running pod explains. At the end each player checks the server's
state hash against every answer it ever had: data lost is any wrong or missing state.

`--strategy post-copy` (or `mixed`, a coin per move) moves with post-copy. Past its commit
point (the destination's resume) a post-copy move cannot go back: a fault that breaks its
page stream there loses the pod's memory by design (the risk window). Such a move must fail
with its reason and leave no copy and no pod object behind (the coordinator deletes them for
the controller to start the pod afresh); it is counted as lost in the risk window, not as
data lost, and the soak plays the StatefulSet controller: the pod made afresh on the
destination, a new player on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from clm.contracts import protocol
from clm.contracts.protocol import Phase, is_terminal
from services.checkpoint_agent.containerd import LOCK_TABLE
from services.coordinator.kube import LEASE_HOLDER
from tests.kit.podlab import expected_hash
from tools.console.migrations import create_migration, follow, migration_body
from tools.sandbox import demo
from tools.sandbox.sandbox import Sandbox
from tools.sandbox.topology import node_ip

STATE_MIB = 32
KILLS = [
    "kill:coordinator",
    "kill:labeler",
    "kill:evictor-planner",
    "kill:checkpoint-agent@source",
    "kill:checkpoint-agent@destination",
    "kill:ip-handover-agent@source",
    "kill:ip-handover-agent@destination",
]
FAULTS = [*KILLS, "restart:nats", "restart:api", "partition", "packet-loss", "disk-full"]
# Faults of post-copy's risk window: the default kinds only where a move goes post-copy.
POST_COPY_FAULTS = ["pages-cut"]
# The page stream of a pages-cut move: slow enough that the kill lands seconds before its end.
PAGES_CUT_BYTES_PER_SECOND = 4 << 20
PHASES = [Phase.PREPARING, Phase.DUMPING, Phase.RESTORING, Phase.FINALIZING]
# Faults of the image channel and the disk matter before the images move: in place before
# the Migration is made (Pending), so the move meets them for certain.
PHASES_OF = {
    "partition": [Phase.PENDING],
    "packet-loss": [Phase.PENDING],
    "disk-full": [Phase.PENDING],
    "pages-cut": [Phase.PENDING],
}
MOVE_TIMEOUT = 180.0
NFT_PREFIX = "clm-soak-"  # + the run's pid: the host's fault rules of one soak run
# Short leases, waits and timeouts: a fault is noticed and recovered from within seconds.
SOAK_ENV = {
    "coordinator": {
        "CLM_LEASE_SECONDS": "4",
        "CLM_STEP_TIMEOUT_SECONDS": "30",
        "CLM_RESYNC_SECONDS": "1",
    },
    "checkpoint-agent": {"CLM_ACK_WAIT_SECONDS": "3"},
    "ip-handover-agent": {"CLM_ACK_WAIT_SECONDS": "3"},
}


def forget_dead_runs_rules() -> None:
    """Delete host fault rules that a killed soak run left (its pid is gone): they would
    cut this run's agents off. A live parallel run's rules are left alone."""
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        family, _, name = line.removeprefix("table ").partition(" ")
        owner = name.removeprefix(NFT_PREFIX)
        dead = name.startswith(NFT_PREFIX) and owner.isdigit() and not pid_alive(int(owner))
        if dead or name == "clm-soak":
            subprocess.run(["nft", "delete", "table", family, name], check=False, capture_output=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STRATEGIES = ("stop-and-copy", "post-copy", "mixed")


@dataclass
class Workload:
    pod: str
    statefulset: str
    player: demo.Player
    reconnects: int = 0
    state_rewound: int = 0  # answered requests the server no longer counts (lost state)
    restarts: int = 0  # made afresh after a post-copy move lost it in its risk window


@dataclass
class Row:
    move: int
    name: str
    pod: str
    source: str
    destination: str
    fault: str
    phase: str
    injected: bool = False
    outcome: str = ""
    reason: str = ""
    copies: int = 0
    where_expected: bool = False
    connection_kept: bool = False
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    strategy: str = "stop-and-copy"
    committed: bool = False

    @property
    def lost_in_risk_window(self) -> bool:
        """A post-copy move that failed past its commit point: the memory is lost by design,
        and nothing of the pod may be left running (no copy with missing memory)."""
        return self.strategy == "post-copy" and self.outcome == "Failed" and self.committed

    @property
    def data_lost(self) -> bool:
        if self.lost_in_risk_window:
            return self.copies != 0 or not self.where_expected
        # A pod gone or running twice; or a connection broken by a move that claims success.
        return (
            self.copies != 1
            or not self.where_expected
            or (self.outcome == "Finished" and not self.connection_kept)
        )


class Soak:
    def __init__(
        self,
        *,
        faults: int,
        seed: int,
        state_dir: Path,
        pex_dir: Path,
        kinds: list[str] | None = None,
        strategy: str = "stop-and-copy",
    ) -> None:
        default = FAULTS if strategy == "stop-and-copy" else [*FAULTS, *POST_COPY_FAULTS]
        self.count, self.rng, self.kinds = faults, random.Random(seed), kinds or default
        # Its own coin: the fault plan of a seed stays the same whatever the strategy.
        self.strategy, self.coin = strategy, random.Random(seed + 1)
        self.sandbox = Sandbox(
            state_dir=state_dir, pex_dir=pex_dir, nats_port=None, planner_dry_run=True, extra_env=SOAK_ENV
        )
        self.workloads: list[Workload] = []
        self.rows: list[Row] = []
        self.faults_active: list[str] = []
        # Named for this run: a parallel or killed run's rules are not this run's leftovers.
        self.nft_table = f"{NFT_PREFIX}{os.getpid()}"

    # ----- set-up -----

    def up(self) -> None:
        forget_dead_runs_rules()
        if not self.sandbox.up():
            raise RuntimeError("the sandbox's services did not all become ready")
        api = self.sandbox.api()
        nodes = self.nodes()
        for index, (statefulset, pod) in enumerate((("game", "game-0"), ("ledger", "ledger-0"))):
            demo.deploy(api, nodes[index], STATE_MIB, statefulset=statefulset, pod=pod)
        for statefulset, pod in (("game", "game-0"), ("ledger", "ledger-0")):
            running = demo.wait_running(api, name=pod)
            player = demo.Player(
                self.client_netns(), running["status"]["podIP"], self.sandbox.state_dir / f"player-{pod}"
            ).start()
            self.workloads.append(Workload(pod=pod, statefulset=statefulset, player=player))

    def check_the_checks(self) -> None:
        """Leave a stray pod network record and image directory, as a broken move would: the
        leftover check must report both (else it could pass a run that leaks)."""
        runtime = self.sandbox.runtimes[0]
        node = runtime.node
        stray_network = runtime.workdir / "cni-state" / "soakcanary000.json"
        stray_images = self.sandbox.state_dir / "nodes" / node / "images" / node / "in" / "soak-canary"
        stray_network.parent.mkdir(parents=True, exist_ok=True)
        stray_network.write_text("{}")
        stray_images.mkdir(parents=True)
        try:
            found = self.leftovers(None)
        finally:
            stray_network.unlink()
            stray_images.rmdir()
        missed = [what for what in ("soakcanary0", "soak-canary") if not any(what in f for f in found)]
        if missed:
            raise RuntimeError(f"the leftover check misses {missed} (it found {found})")
        if self.leftovers(None):
            raise RuntimeError(f"leftovers before any move: {self.leftovers(None)}")

    def nodes(self) -> list[str]:
        assert self.sandbox.topology is not None
        return list(self.sandbox.topology.nodes)

    def client_netns(self) -> str:
        assert self.sandbox.topology is not None
        return self.sandbox.topology.client.name

    def down(self) -> None:
        for w in self.workloads:
            with contextlib.suppress(Exception):
                w.player.finish(timeout=10)
        self.heal()
        self.sandbox.down()

    # ----- one move -----

    def run(self) -> list[Row]:
        plan = [self.kinds[i % len(self.kinds)] for i in range(self.count)]
        self.rng.shuffle(plan)
        for number, fault in enumerate(plan, start=1):
            self.rows.append(self.move(number, fault))
        return self.rows

    def pod_object(self, name: str) -> dict[str, Any]:
        core = client.CoreV1Api(self.sandbox.api())
        return self.sandbox.api().sanitize_for_serialization(core.read_namespaced_pod(name, demo.NAMESPACE))

    def move(self, number: int, fault: str) -> Row:
        workload = self.workloads[number % len(self.workloads)]
        pod = self.pod_object(workload.pod)
        source = pod["spec"]["nodeName"]
        others = [n for n in self.nodes() if n != source]
        destination = self.rng.choice(others)
        phase = self.rng.choice(PHASES_OF.get(fault, PHASES))
        name = f"soak-{number:04d}-{workload.pod}"
        strategy = self.coin.choice(STRATEGIES[:2]) if self.strategy == "mixed" else self.strategy
        row = Row(number, name, workload.pod, source, destination, fault, str(phase), strategy=strategy)
        started = time.monotonic()
        custom = client.CustomObjectsApi(self.sandbox.api())
        injected = threading.Event()
        recovering: list[threading.Thread] = []

        def on_change(status: dict[str, Any]) -> None:
            if (
                fault == "pages-cut"
                and status.get("committed")
                and "restoreSeconds" in status
                and not recovering
            ):
                # Resumed on the destination (past the commit point), pages still to come: the
                # page stream breaks. (A StatefulSet's commit point on kubelet nodes comes
                # before its restore: `committed` alone is too early.)
                worker = threading.Thread(
                    target=self.inject_noting, args=("kill:checkpoint-agent@source", source, destination, row)
                )
                worker.start()
                recovering.append(worker)
            if not injected.is_set() and (status.get("phase") == phase or is_terminal(status.get("phase"))):
                if is_terminal(status.get("phase")) and status.get("phase") != phase:
                    return  # the move ended before the phase came: not injected
                injected.set()
                worker = threading.Thread(
                    target=self.inject_noting, args=(fault, source, destination, row), daemon=True
                )
                worker.start()
                recovering.append(worker)

        body = migration_body(
            name, workload.pod, destination=destination, fallback="restore-on-source", strategy=strategy
        )
        if phase == Phase.PENDING:
            self.inject_noting(fault, source, destination, row)
            injected.set()
        create_migration(custom, demo.NAMESPACE, body)
        status = self.follow(custom, name, on_change)
        for worker in recovering:
            worker.join(timeout=120)
        self.heal()
        row.injected = injected.is_set()
        row.outcome = (status or {}).get("phase", "stuck")
        row.committed = bool((status or {}).get("committed"))
        row.reason = (status or {}).get("failureReason") or (status or {}).get("message", "")
        self.wait_settled()
        self.check(row, workload, status)
        row.seconds = round(time.monotonic() - started, 1)
        return row

    def follow(self, custom: client.CustomObjectsApi, name: str, on_change: Any) -> dict[str, Any] | None:
        """Follow the Migration to its end through API restarts (a watch breaks with them)."""
        deadline = time.monotonic() + MOVE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                status = follow(
                    custom, demo.NAMESPACE, name, timeout=deadline - time.monotonic(), on_change=on_change
                )
                return status
            except Exception:  # - the API restarting under the watch: follow again
                time.sleep(0.5)
                custom = client.CustomObjectsApi(self.sandbox.api())
        return None

    # ----- faults -----

    def inject_noting(self, fault: str, source: str, destination: str, row: Row) -> None:
        try:
            self.inject(fault, source, destination)
        except Exception as exc:  # - the move's row says so (and the run goes on)
            row.leftovers.append(f"fault {fault}: {exc}"[:300])

    def inject(self, fault: str, source: str, destination: str) -> None:
        cluster = self.sandbox.cluster
        assert cluster is not None
        kind, _, what = fault.partition(":")
        if kind == "kill":
            service, _, side = what.partition("@")
            node = {"source": source, "destination": destination}.get(side)
            cluster.kill(service, node)
            # As kubelet does, the container is started again if it crashes at start-up;
            # each crash is reported (an agent that cannot start is a finding).
            crashes = []
            for _ in range(3):
                try:
                    cluster.respawn(service, node)
                    break
                except RuntimeError as exc:
                    crashes.append(str(exc))
            if crashes:
                raise RuntimeError(f"{service} crashed starting again: {crashes[0]}")
        elif fault == "restart:nats":
            cluster.restart_nats()
        elif fault == "restart:api":
            cluster.restart_api()
        elif fault in ("partition", "packet-loss"):
            self.block_agents(destination, loss=5 if fault == "packet-loss" else None)
            if fault == "partition":
                self.partition_nodes(source, destination)
        elif fault == "disk-full":
            self.fill_disk(destination)
        elif fault == "pages-cut":
            self.slow_pages(source)

    def agent_port(self, node: str, what: str = "transfer_address") -> int:
        """The port of an address the node's checkpoint agent logged (it says where it listens)."""
        log = self.sandbox.state_dir / "logs" / f"checkpoint-agent@{node}.log"
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if f'"{what}"' in line and (address := json.loads(line).get(what)):
                return int(address.rsplit(":", 1)[1])
        raise RuntimeError(f"{node}'s agent has not said its {what}")

    def slow_pages(self, source: str) -> None:
        """The source agent's page traffic (post-copy's page server) down to a trickle."""
        port = self.agent_port(source, "pages_address")
        rate = f"{PAGES_CUT_BYTES_PER_SECOND // 1024} kbytes/second"
        self.drop_on_host(f"tcp sport {port} limit rate over {rate}")

    def block_agents(self, destination: str, *, loss: int | None) -> None:
        port = self.agent_port(destination)
        match = f"tcp dport {port}" if loss is None else f"tcp dport {port} numgen random mod 100 < {loss}"
        self.drop_on_host(match)

    def drop_on_host(self, match: str) -> None:
        """The host's outgoing packets that `match` dropped (the agents talk over loopback)."""
        script = (
            f"add table inet {self.nft_table}\n"
            f"add chain inet {self.nft_table} out {{ type filter hook output priority 0 ; }}\n"
            f"add rule inet {self.nft_table} out {match} drop\n"
        )
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
        self.faults_active.append("nft-host")

    def partition_nodes(self, a: str, b: str) -> None:
        topology = self.sandbox.topology
        assert topology is not None
        for here, there in ((a, b), (b, a)):
            peer = node_ip(int(there.rsplit("-", 1)[1]))
            script = (
                f"add table inet {self.nft_table}\n"
                f"add chain inet {self.nft_table} in {{ type filter hook input priority 0 ; }}\n"
                f"add rule inet {self.nft_table} in ip saddr {peer} drop\n"
            )
            netns = topology.nodes[here].name
            subprocess.run(
                ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True
            )
            self.faults_active.append(f"nft:{topology.nodes[here].name}")

    def images_in(self, node: str) -> Path:
        # The agent's CLM_IMAGE_DIR/<node> (app.agent_config).
        return self.sandbox.state_dir / "nodes" / node / "images" / node / "in"

    def fill_disk(self, node: str) -> None:
        target = self.images_in(node)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "clm-soak-full", str(target)], check=True)
        self.faults_active.append(f"mount:{target}")

    def heal(self) -> None:
        for active in reversed(self.faults_active):
            if active == "nft-host":
                subprocess.run(
                    ["nft", "delete", "table", "inet", self.nft_table], check=False, capture_output=True
                )
            elif active.startswith("nft:"):
                netns = active.split(":", 1)[1]
                delete = ["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", self.nft_table]
                subprocess.run(delete, check=False, capture_output=True)
            elif active.startswith("mount:"):
                subprocess.run(["umount", "-l", active.split(":", 1)[1]], check=False, capture_output=True)
        self.faults_active.clear()

    # ----- checks -----

    def wait_settled(self) -> None:
        """Every service ready again (a killed one restarted, NATS and the API back), and each
        node's kubelet done with what the move changed (a source pod's teardown takes seconds,
        as on a real node: not a leftover while it runs)."""
        cluster = self.sandbox.cluster
        assert cluster is not None
        cluster.wait_ready(timeout=60)
        # What is still not done after that shows as a leftover.
        waits = [threading.Thread(target=r.wait_idle, kwargs={"timeout": 60}) for r in self.sandbox.runtimes]
        for wait in waits:
            wait.start()
        for wait in waits:
            wait.join()

    def containers(self, pod: str) -> dict[str, int]:
        """Running containers of the pod (its name: a StatefulSet's), by node, as CRI says."""
        found: dict[str, int] = {}
        for runtime in self.sandbox.runtimes:
            count = runtime.running_copies(demo.NAMESPACE, pod)
            if count:
                found[runtime.node] = count
        return found

    def check(self, row: Row, workload: Workload, status: dict[str, Any] | None) -> None:
        if row.lost_in_risk_window:
            self.check_lost(row, workload, status)
            return
        pod = self.pod_object(workload.pod)
        running = self.containers(workload.pod)
        row.copies = sum(running.values())
        expected = row.destination if row.outcome == "Finished" else row.source
        row.where_expected = set(running) == {expected} and pod["spec"]["nodeName"] == expected
        if row.outcome not in ("Finished", "Failed") or not row.reason:
            row.leftovers.append(f"migration not terminal with a reason ({row.outcome})")
        row.connection_kept = self.player_goes_on(workload)
        if not row.connection_kept and row.outcome == "Failed" and row.copies == 1:
            self.reconnect(workload)  # allowed after a failed move: the pod stayed, its client comes back
        row.leftovers += self.leftovers(status)

    def check_lost(self, row: Row, workload: Workload, status: dict[str, Any] | None) -> None:
        """Lost in the risk window: no copy running anywhere and no pod object (else a
        controller would never make it again); then the pod made afresh, as its StatefulSet
        would, and a new player on it."""
        core = client.CoreV1Api(self.sandbox.api())
        names = {p.metadata.name for p in core.list_namespaced_pod(demo.NAMESPACE).items}
        row.copies = sum(self.containers(workload.pod).values())
        row.where_expected = workload.pod not in names
        if not row.reason:
            row.leftovers.append("migration failed without a reason")
        if workload.pod in names:
            return  # nothing to make afresh: the row says the object was left
        workload.player.finish(timeout=10)
        demo.create_pod(
            self.sandbox.api(), row.destination, STATE_MIB, statefulset=workload.statefulset, pod=workload.pod
        )
        running = demo.wait_running(self.sandbox.api(), name=workload.pod)
        workload.restarts += 1
        workdir = self.sandbox.state_dir / f"player-{workload.pod}-afresh-{workload.restarts}"
        workload.player = demo.Player(self.client_netns(), running["status"]["podIP"], workdir).start()
        row.leftovers += self.leftovers(status)

    def player_goes_on(self, workload: Workload, more: int = 20, timeout: float = 30) -> bool:
        target = workload.player.progress().get("answers", 0) + more
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            progress = workload.player.progress()
            if progress.get("error") or not progress.get("in_order", True):
                return False
            if progress.get("answers", 0) >= target:
                return True
            if workload.player.proc is not None and workload.player.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def reconnect(self, workload: Workload) -> None:
        answered = int(workload.player.finish(timeout=10).get("answers", 0))
        workload.reconnects += 1
        ip = self.pod_object(workload.pod)["status"]["podIP"]
        workdir = self.sandbox.state_dir / f"player-{workload.pod}-{workload.reconnects}"
        workload.player = demo.Player(self.client_netns(), ip, workdir, resume=True).start()
        # The server's own count: one more than the player saw is a request applied whose
        # answer the broken connection lost; fewer is state the server lost.
        resumed = int(workload.player.progress().get("resumed_from", 0))
        workload.state_rewound += max(0, answered - resumed)

    def leftovers(self, status: dict[str, Any] | None) -> list[str]:
        found = []
        topology = self.sandbox.topology
        assert topology is not None
        pods = [self.pod_object(w.pod) for w in self.workloads]
        uids = {p["metadata"]["uid"] for p in pods}
        for runtime in self.sandbox.runtimes:
            found += runtime.leftovers(uids)
        for node, ns in topology.nodes.items():
            routes = subprocess.run(
                ["ip", "-n", ns.name, "route", "show", "proto", "199"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            wanted = {p["status"]["podIP"] for p in pods if p["spec"]["nodeName"] == node}
            for route in routes.splitlines():
                if route.split()[0] not in wanted:
                    found.append(f"route {route.split()[0]} on {node}")
        for runtime in self.sandbox.runtimes:
            for uid, pod_netns in runtime.sandbox_netns().items():
                # The network lock: CRIU's (iptables chains or an nftables table CRIU-<pid>) or the
                # containerd dump's own nftables table.
                for listing in (["iptables-save"], ["nft", "list", "ruleset"]):
                    rules = subprocess.run(
                        ["nsenter", f"--net={pod_netns}", *listing],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout
                    if "CRIU" in rules or LOCK_TABLE in rules:
                        found.append(f"lock rules in pod {uid}'s namespace on {runtime.node} ({listing[0]})")
        # The soak's own fault rules, once healed: none on the host or in any node.
        for netns in [None, *(ns.name for ns in topology.nodes.values())]:
            prefix = ["ip", "netns", "exec", netns] if netns else []
            tables = subprocess.run(
                [*prefix, "nft", "list", "tables"], capture_output=True, text=True, check=False
            ).stdout
            if self.nft_table in tables.split():
                found.append(f"fault rules left in {netns or 'the host'}")
        for node in self.nodes():
            images = self.sandbox.state_dir / "nodes" / node / "images" / node
            for side in ("in", "out"):
                left = [p.name for p in (images / side).glob("*")] if (images / side).is_dir() else []
                found += [f"images {side}/{name} on {node}" for name in left]
        found += criu_processes(self.sandbox.state_dir, self.nodes())
        custom = client.CustomObjectsApi(self.sandbox.api())
        migrations = custom.list_namespaced_custom_object(
            protocol.GROUP, protocol.VERSION, demo.NAMESPACE, protocol.PLURAL
        )["items"]
        for m in migrations:
            if not is_terminal((m.get("status") or {}).get("phase")):
                found.append(f"migration {m['metadata']['name']} not terminal")
            elif LEASE_HOLDER in (m["metadata"].get("annotations") or {}):
                found.append(f"lease on {m['metadata']['name']}")
        return found

    def final_state(self) -> list[dict[str, Any]]:
        """Each server's state checked against the count of requests it answered: nothing lost."""
        verdict = []
        for w in self.workloads:
            result = w.player.finish(timeout=30)
            answers = int(result.get("answers", 0))
            intact = bool(result.get("hash")) and result["hash"] == expected_hash(STATE_MIB, answers)
            verdict.append(
                {
                    "pod": w.pod,
                    "answers": answers,
                    "reconnects": w.reconnects,
                    "made_afresh": w.restarts,
                    "answers_lost": w.state_rewound,
                    "largest_gap_s": round(float(result.get("largest_gap", 0.0)), 2),
                    "state_intact": intact and w.state_rewound == 0,
                }
            )
        return verdict


def criu_processes(state_dir: Path, nodes: list[str]) -> list[str]:
    """CRIU processes of this sandbox alive (dump, restore, lazy-pages, page-server): none
    once a move ended. Other tests' CRIU on the same host is not this run's: a process is
    the sandbox's if its command line or an ancestor's (runc --root) names the sandbox's
    directory, or the task it works on is in one of its nodes' cgroups. The agents' periodic
    capability probe (`criu check`, `criu --version`, `criu cpuinfo dump`) is not one, nor a
    process that is exiting (its command line already gone)."""
    found = []
    pids = subprocess.run(["pgrep", "-x", "criu"], capture_output=True, text=True, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue
            words = _argv(int(pid))
            if not words or (len(words) > 1 and words[1] in ("check", "--version", "-V", "cpuinfo")):
                continue
            if _belongs(int(pid), words, state_dir, nodes):
                found.append(f"criu process {pid}: {' '.join(words)[:120]}")
    return found


def _argv(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _belongs(pid: int, words: list[str], state_dir: Path, nodes: list[str]) -> bool:
    here = str(state_dir)
    current = pid
    for _ in range(8):  # criu, runc, the agent, ...
        with contextlib.suppress(OSError):
            if any(here in w for w in _argv(current)):
                return True
            status = Path(f"/proc/{current}/status").read_text()
            current = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if current <= 1:
            break
    if "-t" in words[:-1]:
        target = words[words.index("-t") + 1]
        with contextlib.suppress(OSError, ValueError):
            cgroups = Path(f"/proc/{int(target)}/cgroup").read_text()
            return any(f"/clm-sbx/{node}/" in cgroups for node in nodes)
    return False


def table(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for fault in [*FAULTS, *POST_COPY_FAULTS, "all"]:
        mine = [r for r in rows if fault in ("all", r.fault)]
        if not mine:
            continue
        out.append(
            {
                "fault": fault,
                "moves": len(mine),
                "injected": sum(r.injected for r in mine),
                "finished": sum(r.outcome == "Finished" for r in mine),
                "rolled_back": sum(r.outcome == "Failed" for r in mine),
                "survived": sum((not r.data_lost) and not r.leftovers for r in mine),
                "data_lost": sum(r.data_lost for r in mine),
                "post_copy": sum(r.strategy == "post-copy" for r in mine),
                "lost_in_risk_window": sum(r.lost_in_risk_window for r in mine),
                "connections_kept": sum(r.connection_kept for r in mine),
                "leftovers": sum(len(r.leftovers) for r in mine),
                "seconds_median": sorted(r.seconds for r in mine)[len(mine) // 2],
            }
        )
    return out


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def soak(
    *,
    faults: int,
    seed: int,
    pex_dir: Path,
    kinds: list[str] | None = None,
    keep_logs: Path | None = None,
    strategy: str = "stop-and-copy",
) -> tuple[list[Row], list[dict[str, Any]]]:
    if threading.current_thread() is threading.main_thread():
        # A stopped soak must still heal its faults and take the sandbox down (finally below).
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="clm-soak-") as tmp:
        run = Soak(
            faults=faults,
            seed=seed,
            state_dir=Path(tmp) / "sandbox",
            pex_dir=pex_dir,
            kinds=kinds,
            strategy=strategy,
        )
        try:
            run.up()
            run.check_the_checks()
            rows = run.run()
            final = run.final_state()
        finally:
            run.down()
            if keep_logs is not None and (run.sandbox.state_dir / "logs").is_dir():
                shutil.rmtree(keep_logs, ignore_errors=True)
                shutil.copytree(run.sandbox.state_dir / "logs", keep_logs)
    return rows, final


def run(
    *,
    quick: bool = False,
    faults: int | None = None,
    seed: int = 1,
    kinds: list[str] | None = None,
    strategy: str = "stop-and-copy",
) -> list[tuple[str, list[dict[str, Any]]]]:
    every = [*FAULTS, *POST_COPY_FAULTS]
    unknown = sorted(set(kinds or []) - set(every))
    if unknown:
        raise SystemExit(f"unknown fault {', '.join(unknown)}: choose from {', '.join(every)}")
    if strategy not in STRATEGIES:
        raise SystemExit(f"unknown strategy {strategy}: choose from {', '.join(STRATEGIES)}")
    count = faults or (30 if quick else 100)
    pex_dir = Path(os.environ.get("CLM_PEX_DIR", "dist"))
    logs = Path("dist/bench/soak-logs")
    rows, final = soak(
        faults=count, seed=seed, pex_dir=pex_dir, kinds=kinds, keep_logs=logs, strategy=strategy
    )
    rolled_back = [
        {
            "move": r.move,
            "strategy": r.strategy,
            "fault": r.fault,
            "phase": r.phase,
            "committed": r.committed,
            "reason": r.reason[:160],
        }
        for r in rows
        if r.outcome != "Finished"
    ]
    problems = [
        {
            "move": r.move,
            "fault": r.fault,
            "phase": r.phase,
            "outcome": r.outcome,
            "copies": r.copies,
            "where_expected": r.where_expected,
            "leftovers": "; ".join(r.leftovers)[:200],
        }
        for r in rows
        if r.data_lost or r.leftovers
    ]
    slowest = [
        {
            "move": r.move,
            "migration": r.name,
            "fault": r.fault,
            "phase": r.phase,
            "outcome": r.outcome,
            "seconds": r.seconds,
        }
        for r in sorted(rows, key=lambda r: -r.seconds)[:5]
    ]
    return [
        (
            f"Chaos soak: {count} faulted moves between three nodes, by fault kind (seed {seed}, {strategy})",
            table(rows),
        ),
        ("Moves with data lost or leftovers", problems or [{"move": "(none)"}]),
        ("Moves that failed and rolled back, with the reason they give", rolled_back or [{"move": "(none)"}]),
        (f"The slowest moves (the services' logs are in {logs})", slowest),
        ("Each server's state at the end, checked against every answer it gave", final),
    ]
