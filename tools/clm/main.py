"""clm: CLM's command-line tool.

    clm explain NAMESPACE/POD   why a pod is (not) eligible, and what the Evictor would do
    clm plan                    the evictor-planner's current plan

Reads the Kubernetes API from --kubeconfig (or $KUBECONFIG, ~/.kube/config, in-cluster) and
NATS from --nats (or $CLM_NATS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson


def _explain(args: argparse.Namespace) -> int:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from clm.runtime.informer import NAMESPACED
    from tools.clm.explain import explain, render

    namespace, _, name = args.pod.partition("/")
    if not name:
        print(f"clm explain: give the pod as NAMESPACE/POD, not {args.pod!r}", file=sys.stderr)
        return 2
    try:
        if args.kubeconfig or os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().is_file():
            config.load_kube_config(config_file=args.kubeconfig)
        else:
            config.load_incluster_config()
    except config.ConfigException as exc:
        print(f"clm explain: no Kubernetes API configured ({exc}): pass --kubeconfig", file=sys.stderr)
        return 2
    api = client.ApiClient()
    paths = {
        "Pod": "/api/v1/namespaces/{ns}/pods/{name}",
        "Node": "/api/v1/nodes/{name}",
        "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
        "PersistentVolume": "/api/v1/persistentvolumes/{name}",
        "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
        "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
        "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
        "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
        "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
        "CronJob": "/apis/batch/v1/namespaces/{ns}/cronjobs/{name}",
    }

    def get(kind: str, ns: str, obj_name: str) -> dict | None:
        path = paths.get(kind)
        if path is None or not obj_name:
            return None
        try:
            resp = api.call_api(
                path.format(ns=ns if kind in NAMESPACED else "", name=obj_name),
                "GET",
                _preload_content=False,
                auth_settings=["BearerToken"],
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return orjson.loads(resp.data)

    try:
        pod = get("Pod", namespace, name)
    except ApiException as exc:
        print(f"clm explain: the API answered {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    if pod is None:
        print(f"clm explain: no pod {namespace}/{name}", file=sys.stderr)
        return 1
    report = explain(pod, get)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json else render(report))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from tools.clm.plan import latest_plan, render

    try:
        plan = asyncio.run(latest_plan(args.nats))
    except Exception as exc:  # - any connection trouble: say where
        print(
            f"clm plan: cannot read the plan from NATS at {args.nats}: {exc}"
            " (is NATS running there? pass its address with --nats URL)",
            file=sys.stderr,
        )
        return 1
    if plan is None:
        print("clm plan: no plan published yet — is the evictor-planner running?", file=sys.stderr)
        return 1
    print(plan.model_dump_json(indent=2) if args.json else render(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="why a pod is (not) eligible, and what the Evictor would do")
    explain.add_argument("pod", metavar="NAMESPACE/POD")
    explain.add_argument("--kubeconfig", default=None)
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(run=_explain)
    plan = sub.add_parser("plan", help="the evictor-planner's current plan")
    plan.add_argument("--nats", default=os.environ.get("CLM_NATS_URL", "nats://127.0.0.1:4222"))
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(run=_plan)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
