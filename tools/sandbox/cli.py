"""`clm sandbox up|down|status` — and `tools/run`, the README's main job, which is
`clm sandbox up --foreground --demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client

from clm.contracts import protocol
from clm.contracts.events import MigrationEvent
from clm.contracts.protocol import Phase
from tests.kit.containerd_node import stop_leftover_containerds
from tools.console.events import render, stream_events
from tools.console.report import emit
from tools.kube_emulator.testing import api_client
from tools.sandbox import binpack, demo
from tools.sandbox.kubelet_node import SOCKETS
from tools.sandbox.sandbox import (
    DEFAULT_STATE_DIR,
    Sandbox,
    another_sandbox,
    delete_all_containers,
    machine_lock_holder,
    missing_requirements,
    pid_alive,
    read_state,
)
from tools.sandbox.topology import remove_leftovers


def add_arguments(sub: argparse._SubParsersAction) -> None:
    sandbox = sub.add_parser("sandbox", help="a whole CLM cluster on this machine (root)")
    verbs = sandbox.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start the sandbox (in the background unless --foreground)")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument("--pex-dir", type=Path, default=Path(os.environ.get("CLM_PEX_DIR", "dist")))
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument(
        "--nats-port",
        type=int,
        default=4222,
        help="4222 unless taken (then a free port; 0: always a free port)",
    )
    up.add_argument(
        "--planner-live", action="store_true", help="let the evictor-planner act (default: dry run)"
    )
    up.add_argument("--foreground", action="store_true", help="run here, show progress, stop on Ctrl-C")
    up.add_argument("--demo", action="store_true", help="deploy the demo game server and its player")
    up.add_argument(
        "--auto-move",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="with --demo: move the pod to the next node every SECONDS (0: never)",
    )
    up.add_argument("--moves", type=int, default=None, help="with --demo: stop after this many moves")
    up.add_argument("--state-mib", type=int, default=64, help="with --demo: the game server's state size")
    up.add_argument(
        "--binpack",
        action="store_true",
        help="with --foreground: deploy a fragmented cluster and let the evictor-planner bin-pack it live",
    )
    up.set_defaults(run=_up)
    down = verbs.add_parser("down", help="stop the sandbox and remove everything it created")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    down.set_defaults(run=_down)
    status = verbs.add_parser("status", help="services, nodes, pods and migrations of the sandbox")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    status.set_defaults(run=_status)


def _up(args: argparse.Namespace) -> int:
    if args.binpack and (args.demo or not args.foreground):
        print(
            "clm sandbox up: --binpack runs in the foreground on its own: "
            "use `clm sandbox up --foreground --binpack` (without --demo)",
            file=sys.stderr,
        )
        return 2
    problems = missing_requirements()
    missing = [
        s
        for s in ("labeler", "evictor-planner", "coordinator", "checkpoint-agent", "ip-handover-agent")
        if not (args.pex_dir / f"clm-{s}.pex").is_file()
    ]
    if missing:
        problems.append(
            f"service PEXes missing in {args.pex_dir}: {', '.join(missing)}"
            " (build: ./pants package services::)"
        )
    if problems:
        print(
            "clm sandbox up: " + "; ".join(problems) + " — tools/run installs and builds everything",
            file=sys.stderr,
        )
        return 2
    running = read_state(args.state_dir)
    if running is not None:
        print(
            f"clm sandbox up: a sandbox already runs from {args.state_dir} (pid {running['pid']}); "
            "`clm sandbox down` stops it",
            file=sys.stderr,
        )
        return 1
    holder = machine_lock_holder()
    if holder is not None:
        print(f"clm sandbox up: {another_sandbox(holder)}", file=sys.stderr)
        return 1
    if args.foreground:
        return _foreground(args)
    return _background(args)


def _background(args: argparse.Namespace) -> int:
    args.state_dir.mkdir(parents=True, exist_ok=True)
    log = args.state_dir / "sandbox.log"
    (args.state_dir / "state.json").unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # the sandbox: its own session, output to its log, until `down`
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        with log.open("ab") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        with open(os.devnull, "rb") as devnull:
            os.dup2(devnull.fileno(), 0)
        args.foreground = True
        code = 1
        try:
            code = _foreground(args, quiet_wait=True)
        except BaseException:  # os._exit below would swallow it: the log is all `up` can show
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = read_state(args.state_dir)
        if state is not None:
            print(f"sandbox running (pid {state['pid']}); log {log}")
            return _status(args)
        if "sandbox stopped" in (log.read_text(errors="replace") if log.exists() else ""):
            break
        time.sleep(0.5)
    print(
        f"clm sandbox up: the sandbox did not come up; its log ({log}) ends:\n"
        + (log.read_text(errors="replace")[-3000:] if log.exists() else "(empty)"),
        file=sys.stderr,
    )
    return 1


def _foreground(args: argparse.Namespace, *, quiet_wait: bool = False) -> int:
    sandbox = Sandbox(
        state_dir=args.state_dir,
        pex_dir=args.pex_dir,
        node_count=args.nodes,
        nats_port=args.nats_port,
        planner_dry_run=not args.planner_live,
    )
    stop = asyncio.Event()
    code = 0
    try:
        ready = sandbox.up()
        assert sandbox.cluster is not None and sandbox.topology is not None
        emit("CLM sandbox services", sandbox.cluster.status_rows(), as_json=False)
        nodes = list(sandbox.topology.nodes)
        namespaces = ", ".join(ns.name for ns in sandbox.topology.nodes.values())
        print(f"\nnodes: {', '.join(nodes)} (network namespaces {namespaces})")
        print(f"NATS JetStream: {sandbox.nats_url}   (clm events --follow)")
        print(f"Kubernetes API (emulator): export KUBECONFIG={sandbox.kubeconfig}; kubectl get pods -A")
        print(f"a shell on the client host: nsenter --net=/var/run/netns/{sandbox.topology.client.name} bash")
        print(f"logs: {args.state_dir / 'logs'}", flush=True)
        if not ready:
            print("\nsome services are not healthy: see their logs", file=sys.stderr)
            for proc in sandbox.cluster.procs:
                if proc.popen.poll() is not None:
                    print(f"--- {proc.name} exited {proc.popen.returncode}; its log ends:", file=sys.stderr)
                    print(proc.log_tail(), file=sys.stderr)
            return 1
        if args.binpack:
            code = asyncio.run(_binpack(sandbox, args, stop))
        elif args.demo:
            code = asyncio.run(_demo(sandbox, nodes, args, stop))
        else:
            asyncio.run(_wait_for_signal(stop, quiet=quiet_wait))
        return code
    except RuntimeError as exc:
        print(f"clm sandbox: {exc}", file=sys.stderr)
        return 1
    finally:
        if sandbox.machine_lock is not None:  # else up() refused before creating anything
            codes = sandbox.down()
            bad = [f"{name} exited {c}" for name, c in codes if c != 0]
            print(
                "sandbox stopped; removed its processes, namespaces, containers and state"
                + (f" ({'; '.join(bad)})" if bad else ""),
                flush=True,
            )


async def _wait_for_signal(stop: asyncio.Event, *, quiet: bool) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not quiet:
        print("\nthe sandbox runs until Ctrl-C", flush=True)
    await stop.wait()


async def _demo(sandbox: Sandbox, nodes: list[str], args: argparse.Namespace, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = sandbox.api()
    assert sandbox.topology is not None
    await asyncio.to_thread(demo.deploy, api, nodes[0], args.state_mib)
    pod = await asyncio.to_thread(demo.wait_running, api)
    ip = pod["status"]["podIP"]
    print(
        f"\ndemo: {demo.NAMESPACE}/{demo.POD} (StatefulSet {demo.STATEFULSET}, "
        f"{args.state_mib} MiB of state) "
        f"runs on {nodes[0]} at {ip}:{demo.PORT}",
        flush=True,
    )
    labeled = await asyncio.to_thread(demo.wait_labeled, api)
    print(
        "  the labeler marked it live.cast.ai/migration-enabled=true"
        if labeled
        else "  the labeler has not marked it eligible yet (see logs/labeler.log)",
        flush=True,
    )
    player = await asyncio.to_thread(
        demo.Player(sandbox.topology.client.name, ip, args.state_dir / "demo").start
    )
    print(f"  a player on the client host holds one connection to {ip}:{demo.PORT}", flush=True)
    if args.auto_move <= 0 or len(nodes) < 2:
        await _wait_for_signal(stop, quiet=False)
        result = await asyncio.to_thread(player.finish)
        print(f"player: {result.get('answers')} answers, error: {result.get('error')}")
        return 0 if not result.get("error") else 1
    summary = await demo.run_demo(
        api,
        sandbox.nats_url,
        nodes,
        player,
        every=args.auto_move,
        max_moves=args.moves,
        state_mib=args.state_mib,
        stop=stop,
    )
    print()
    emit(
        "Demo summary",
        [
            {
                "moves": summary["moves"],
                "finished": summary["finished"],
                "largest_freeze_ms": round(summary["largest_freeze_ms"], 1),
                "largest_client_gap_ms": summary["largest_client_gap_ms"],
                "answers": summary["answers"],
                "connections_dropped": summary["connections_dropped"],
                "state_verified": "yes" if summary["state_verified"] else "NO",
            }
        ],
        as_json=False,
    )
    for failure in summary["failed"]:
        print(f"  {failure}")
    if summary["client_error"]:
        print(f"  the player's connection: {summary['client_error']}")
    ok = not summary["failed"] and not summary["connections_dropped"] and summary["state_verified"]
    return 0 if ok else 1


async def _binpack(sandbox: Sandbox, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """The planner's bin-packing, shown: a fragmented cluster, the planner switched live, each
    migration event as it arrives, then where every pod went and how the player fared."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = sandbox.api()
    assert sandbox.topology is not None and sandbox.cluster is not None
    await asyncio.to_thread(binpack.deploy, api, min(args.state_mib, 256))
    print(f"\nbinpack: a fragmented cluster in namespace {binpack.NAMESPACE} (see tools/sandbox/binpack.py)")
    deadline = loop.time() + 120
    while not await asyncio.to_thread(binpack.ready_to_plan, api):
        if loop.time() > deadline or stop.is_set():
            print("the pods did not all start and get labeled within 120s; see the logs", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)
    before = await asyncio.to_thread(binpack.placement, api)
    emit("Before", [{"pod": n, "node": node, "ip": ip} for n, (node, ip) in before.items()], as_json=False)
    player = await asyncio.to_thread(
        demo.Player(sandbox.topology.client.name, before["game-0"][1], args.state_dir / "binpack").start
    )
    print(f"\na player on the client host holds one connection to game-0 ({before['game-0'][1]})")
    print("the evictor-planner now acts (it ran dry while the cluster filled)\n", flush=True)
    await asyncio.to_thread(
        sandbox.cluster.restart,
        "evictor-planner",
        {"CLM_DRY_RUN": "false", "CLM_INTERVAL_SECONDS": "2", "CLM_SETTLE_SECONDS": "1"},
    )

    def show(event: MigrationEvent, _raw: bytes) -> None:
        print("  event  " + render(event), flush=True)

    events = asyncio.create_task(stream_events(sandbox.nats_url, show, follow=True, stop=stop))
    deadline = loop.time() + 180
    done = False
    while not stop.is_set() and loop.time() < deadline:
        if await asyncio.to_thread(binpack.drained, api):
            done = True
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # the last events reach the display
    stop.set()
    await asyncio.gather(events, return_exceptions=True)
    result = await asyncio.to_thread(player.finish)
    rows = binpack.outcome_rows(before, await asyncio.to_thread(binpack.placement, api))
    print()
    emit(f"After: {binpack.DRAINED} {'drained' if done else 'NOT drained'}", rows, as_json=False)
    gap_ms = float(result.get("largest_gap", 0)) * 1000
    kept = "connection kept" if not result.get("error") else f"connection LOST: {result['error']}"
    print(f"\nplayer: {result.get('answers', 0)} answers, largest gap {gap_ms:.0f} ms, {kept}", flush=True)
    return 0 if done and binpack.as_expected(rows) and not result.get("error") else 1


def _down(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    holder = machine_lock_holder()
    pid = int(state["pid"]) if state is not None else None
    if pid is None and holder is not None:
        if holder.get("state_dir") != str(args.state_dir):
            # Its namespaces and links look like leftovers by name: leave them alone.
            print(
                f"clm sandbox down: no sandbox runs from {args.state_dir}; the one on this machine "
                f"(pid {holder.get('pid', '?')}) runs from {holder.get('state_dir', '?')}: "
                f"`clm sandbox down --state-dir {holder.get('state_dir', '?')}` stops it",
                file=sys.stderr,
            )
            return 1
        pid = int(holder.get("pid", 0)) or None  # still coming up: state.json not written yet
    if pid is not None:
        _stop_process(pid)
    # Whatever a crashed sandbox left: containerds and shims, containers, namespaces, links.
    stop_leftover_containerds(args.state_dir / "nodes", SOCKETS)
    for runc_root in args.state_dir.glob("nodes/*/runc"):
        delete_all_containers(runc_root)
    left = remove_leftovers()
    if pid is None and not left:
        print(f"no sandbox runs from {args.state_dir}; nothing left to remove")
    else:
        print("sandbox stopped" + (f"; removed leftovers: {', '.join(left)}" if left else ""))
    return 0


def _stop_process(pid: int) -> None:
    """SIGTERM (the sandbox removes what it created), SIGKILL after 90 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.3)
    print(f"clm sandbox down: pid {pid} did not stop within 90s; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _ready(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return "yes" if resp.status == 200 else "NO"
    except urllib.error.HTTPError:
        return "NO"
    except OSError:
        return "down"


def _status(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir)
    if state is None:
        print(
            f"clm sandbox status: no sandbox runs from {args.state_dir} (start one: clm sandbox up)",
            file=sys.stderr,
        )
        return 1
    emit(
        "Services",
        [
            {"service": s["name"], "pid": str(s["pid"]), "ready": _ready(s["port"]), "log": s["log"]}
            for s in state["services"]
        ],
        as_json=False,
    )
    api = api_client(state["kube_url"])
    core = client.CoreV1Api(api)
    emit(
        "Nodes",
        [
            {
                "node": n.metadata.name,
                "netns": state["nodes"].get(n.metadata.name, ""),
                "migration_enabled": (n.metadata.labels or {}).get("live.cast.ai/migration-enabled", "-"),
                "cordoned": "yes" if n.spec.unschedulable else "no",
            }
            for n in core.list_node().items
        ],
        as_json=False,
    )
    pods = core.list_pod_for_all_namespaces().items
    emit(
        "Pods",
        [
            {
                "pod": f"{p.metadata.namespace}/{p.metadata.name}",
                "node": p.spec.node_name or "-",
                "phase": p.status.phase if p.status else "-",
                "ip": (p.status.pod_ip if p.status else None) or "-",
                "migration_enabled": (p.metadata.labels or {}).get("live.cast.ai/migration-enabled", "-"),
            }
            for p in pods
        ]
        or [{"pod": "(none)"}],
        as_json=False,
    )
    migrations = client.CustomObjectsApi(api).list_cluster_custom_object(*protocol.CRD)["items"]
    emit(
        "Migrations",
        [
            {
                "migration": f"{m['metadata']['namespace']}/{m['metadata']['name']}",
                "pod": m["spec"].get("podName"),
                "phase": (m.get("status") or {}).get("phase", Phase.PENDING),
                "from": (m.get("status") or {}).get("sourceNode", "-"),
                "to": (m.get("status") or {}).get("destinationNode", m["spec"].get("destinationNode", "-")),
            }
            for m in migrations
        ]
        or [{"migration": "(none)"}],
        as_json=False,
    )
    print(f"\nNATS: {state['nats_url']}   KUBECONFIG={state['kubeconfig']}")
    return 0
