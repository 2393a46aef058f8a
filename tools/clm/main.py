"""clm: CLM's command-line tool.

    clm sandbox up|down|status          a whole CLM cluster on this machine
    clm events [--follow] [--json]      migration events on NATS
    clm migrate NAMESPACE/POD [--to NODE] [--strategy S]   create a Migration and follow it
    clm migrate --cancel NAMESPACE/POD                     cancel the pod's running migration
    clm watch [-n NAMESPACE] [--once|--until-done]  every migration in a live table
    clm explain NAMESPACE/POD           why a pod is (not) eligible, and what the Evictor would do
    clm plan                            the evictor-planner's current plan
    clm agent-certs DIR [--renew|--new-ca]  the agents' CA and certificate (their mutual TLS)
    clm nats-certs DIR                  NATS TLS and credentials (components/nats-tls), as Secrets

Reads the Kubernetes API from --kubeconfig (or $KUBECONFIG, ~/.kube/config, the running
sandbox's, in-cluster) and NATS from --nats (or $CLM_NATS_URL, the running sandbox's,
nats://127.0.0.1:4222).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from clm.contracts import MigrationStrategy
from tools.clm import agent_certs, explain, migrate, plan
from tools.clm.kube_objects import object_reader
from tools.clm.watch import watch_migrations
from tools.console import events
from tools.sandbox import cli as sandbox_cli
from tools.sandbox import sandbox

SANDBOX_STATE = Path(os.environ.get("CLM_SANDBOX_DIR", "/tmp/clm-sandbox"))


def _sandbox_state() -> dict | None:
    return sandbox.read_state(SANDBOX_STATE)


def default_nats() -> str:
    if os.environ.get("CLM_NATS_URL"):
        return os.environ["CLM_NATS_URL"]
    state = _sandbox_state()
    return state["nats_url"] if state else "nats://127.0.0.1:4222"


def _load_kube(command: str, kubeconfig: str | None):
    """An API client from --kubeconfig, $KUBECONFIG, ~/.kube/config, the sandbox, in-cluster;
    None (after saying why) when there is none."""
    try:
        if kubeconfig or os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().is_file():
            config.load_kube_config(config_file=kubeconfig)
        elif (state := _sandbox_state()) is not None:
            config.load_kube_config(config_file=state["kubeconfig"])
        else:
            config.load_incluster_config()
    except config.ConfigException as exc:
        print(
            f"clm {command}: no Kubernetes API configured ({exc}): pass --kubeconfig, "
            "or start the sandbox (clm sandbox up)",
            file=sys.stderr,
        )
        return None
    return client.ApiClient()


def _explain(args: argparse.Namespace) -> int:
    namespace, _, name = args.pod.partition("/")
    if not name:
        print(f"clm explain: give the pod as NAMESPACE/POD, not {args.pod!r}", file=sys.stderr)
        return 2
    api = _load_kube("explain", args.kubeconfig)
    if api is None:
        return 2
    get = object_reader(api)

    try:
        pod = get("Pod", namespace, name)
    except ApiException as exc:
        print(f"clm explain: the API answered {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    if pod is None:
        print(f"clm explain: no pod {namespace}/{name}", file=sys.stderr)
        return 1
    report = explain.explain(pod, get)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json else explain.render(report))
    return 0


def _plan(args: argparse.Namespace) -> int:
    try:
        latest = asyncio.run(plan.latest_plan(args.nats))
    except Exception as exc:  # - any connection trouble: say where
        print(
            f"clm plan: cannot read the plan from NATS at {args.nats}: {exc}"
            " (is NATS running there? pass its address with --nats URL)",
            file=sys.stderr,
        )
        return 1
    if latest is None:
        print("clm plan: no plan published yet — is the evictor-planner running?", file=sys.stderr)
        return 1
    print(latest.model_dump_json(indent=2) if args.json else plan.render(latest))
    return 0


def _events(args: argparse.Namespace) -> int:
    def show(event, raw: bytes) -> None:
        print(raw.decode() if args.json else events.render(event), flush=True)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await events.stream_events(args.nats, show, follow=args.follow, stop=stop)

    try:
        shown = asyncio.run(run())
    except Exception as exc:  # - any connection trouble: say where
        print(
            f"clm events: cannot read events from NATS at {args.nats}: {exc}"
            " (is NATS running there? pass its address with --nats URL)",
            file=sys.stderr,
        )
        return 1
    if shown == 0 and not args.follow:
        print("clm events: no migration events yet", file=sys.stderr)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    namespace, _, name = args.pod.partition("/")
    if not name:
        print(f"clm migrate: give the pod as NAMESPACE/POD, not {args.pod!r}", file=sys.stderr)
        return 2
    api = _load_kube("migrate", args.kubeconfig)
    if api is None:
        return 2
    if args.cancel:
        if args.to or args.strategy:
            print("clm migrate: --cancel takes no --to or --strategy", file=sys.stderr)
            return 2
        return migrate.cancel(api, namespace, name, wait=not args.no_wait, timeout=args.timeout)
    return migrate.migrate(
        api,
        namespace,
        name,
        to=args.to,
        strategy=args.strategy,
        wait=not args.no_wait,
        timeout=args.timeout,
    )


def _watch(args: argparse.Namespace) -> int:
    api = _load_kube("watch", args.kubeconfig)
    if api is None:
        return 2
    return watch_migrations(
        api, args.namespace, once=args.once, until_done=args.until_done, timeout=args.timeout
    )


def _agent_certs(args: argparse.Namespace) -> int:
    if args.renew and args.new_ca:
        print("clm agent-certs: --renew or --new-ca, not both", file=sys.stderr)
        return 2
    try:
        for line in agent_certs.agent_certs(args.directory, renew=args.renew, new_ca=args.new_ca):
            print(line, file=sys.stderr)
    except ValueError as exc:
        print(f"clm agent-certs: {exc}", file=sys.stderr)
        return 1
    if args.secret:
        print(agent_certs.secret_manifest(args.directory))
    else:
        d = args.directory
        print(
            f"kubectl -n {agent_certs.NAMESPACE} create secret generic clm-agent-tls "
            "--type=kubernetes.io/tls "
            f"--from-file={d}/ca.crt --from-file={d}/tls.crt --from-file={d}/tls.key "
            "--dry-run=client -o yaml | kubectl apply -f -"
        )
    return 0


def _nats_certs(args: argparse.Namespace) -> int:
    try:
        for line in agent_certs.nats_certs(args.directory, namespace=args.namespace):
            print(line, file=sys.stderr)
    except ValueError as exc:
        print(f"clm nats-certs: {exc}", file=sys.stderr)
        return 1
    print(agent_certs.nats_secrets(args.directory, namespace=args.namespace))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    explain_cmd = sub.add_parser("explain", help="why a pod is (not) eligible, and what the Evictor would do")
    explain_cmd.add_argument("pod", metavar="NAMESPACE/POD")
    explain_cmd.add_argument("--kubeconfig", default=None)
    explain_cmd.add_argument("--json", action="store_true")
    explain_cmd.set_defaults(run=_explain)
    plan_cmd = sub.add_parser("plan", help="the evictor-planner's current plan")
    plan_cmd.add_argument("--nats", default=None)
    plan_cmd.add_argument("--json", action="store_true")
    plan_cmd.set_defaults(run=_plan)
    events_cmd = sub.add_parser("events", help="migration events on NATS, from the start of the stream")
    events_cmd.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events_cmd.add_argument("--json", action="store_true", help="one JSON object per line, as published")
    events_cmd.add_argument("--nats", default=None)
    events_cmd.set_defaults(run=_events)
    move = sub.add_parser("migrate", help="create a Migration for a pod and follow it to the end")
    move.add_argument("pod", metavar="NAMESPACE/POD")
    move.add_argument(
        "--to", default=None, metavar="NODE", help="destination (default: the coordinator picks)"
    )
    move.add_argument(
        "--strategy",
        choices=[str(s) for s in MigrationStrategy],
        default=None,
        help="how memory moves (default: the Migration's default, auto)",
    )
    move.add_argument(
        "--cancel",
        action="store_true",
        help="cancel the pod's running migration (before its commit point the pod stays where it runs)",
    )
    move.add_argument("--no-wait", action="store_true", help="return once the Migration is created")
    move.add_argument("--timeout", type=float, default=300.0)
    move.add_argument("--kubeconfig", default=None)
    move.set_defaults(run=_migrate)
    watching = sub.add_parser("watch", help="every migration in a live table (Ctrl-C ends it)")
    watching.add_argument("--namespace", "-n", default=None, help="one namespace (default: all)")
    watching.add_argument("--once", action="store_true", help="print the table once and return")
    watching.add_argument(
        "--until-done", action="store_true", help="return once every migration seen has ended"
    )
    watching.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    watching.add_argument("--kubeconfig", default=None)
    watching.set_defaults(run=_watch)
    certs = sub.add_parser("agent-certs", help="the agents' CA and certificate (Secret clm-agent-tls)")
    certs.add_argument("directory", type=Path, metavar="DIR")
    certs.add_argument("--renew", action="store_true", help="a new certificate from the CA in DIR")
    certs.add_argument("--new-ca", action="store_true", help="a new CA, the old one trusted meanwhile")
    certs.add_argument("--secret", action="store_true", help="print the Secret manifest to apply")
    certs.set_defaults(run=_agent_certs)
    nats = sub.add_parser("nats-certs", help="the NATS servers' CA, certificate and password (nats-tls)")
    nats.add_argument("directory", type=Path, metavar="DIR")
    nats.add_argument("--namespace", default=agent_certs.NAMESPACE)
    nats.set_defaults(run=_nats_certs)
    sandbox_cli.add_arguments(sub)
    args = parser.parse_args(argv)
    if getattr(args, "nats", "") is None:
        args.nats = default_nats()
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
