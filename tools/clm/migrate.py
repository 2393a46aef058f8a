"""`clm migrate NAMESPACE/POD [--to NODE]`: create a Migration object for the pod and follow
its phases to the end, as the coordinator records them."""

from __future__ import annotations

import secrets
import sys
import time
from typing import Any, TextIO

from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "live.cast.ai", "v1", "migrations"
TERMINAL = ("Finished", "Failed")


def migration_name(pod: str) -> str:
    # Kubernetes names are at most 253 characters; keep it readable and unique.
    return f"{pod[:230]}-move-{secrets.token_hex(3)}"


def migrate(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    *,
    to: str | None,
    wait: bool,
    timeout: float,
    poll: float = 0.3,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    # Looked up at call time: callers (and tests) may have redirected them.
    out, err = out or sys.stdout, err or sys.stderr
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        found = core.read_namespaced_pod(pod, namespace)
    except ApiException as exc:
        if exc.status == 404:
            print(f"clm migrate: no pod {namespace}/{pod}", file=err)
            return 1
        print(f"clm migrate: the API answered {exc.status} {exc.reason}", file=err)
        return 1
    if to is not None:
        if to == found.spec.node_name:
            print(f"clm migrate: {namespace}/{pod} already runs on {to}", file=err)
            return 1
        try:
            core.read_node(to)
        except ApiException as exc:
            if exc.status == 404:
                nodes = ", ".join(n.metadata.name for n in core.list_node().items)
                print(f"clm migrate: no node {to} (nodes: {nodes or 'none'})", file=err)
                return 1
            raise
    name = migration_name(pod)
    spec: dict[str, Any] = {"podName": pod}
    if to:
        spec["destinationNode"] = to
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Migration",
                "metadata": {"name": name},
                "spec": spec,
            },
        )
    except ApiException as exc:
        print(f"clm migrate: the API refused the Migration: {exc.status} {exc.body or exc.reason}", file=err)
        return 1
    print(
        f"migration {namespace}/{name}: {pod} on {found.spec.node_name} -> {to or '(the coordinator picks)'}",
        file=out,
        flush=True,
    )
    if not wait:
        return 0
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        )
        phase = status.get("phase", "Pending")
        seen = (phase, status.get("message", ""))
        if seen != last:
            print(f"  {phase}: {status.get('message', '')}", file=out, flush=True)
            last = seen
        if phase in TERMINAL:
            if phase == "Finished":
                print(
                    f"done: {pod} runs on {status.get('destinationNode')} as {status.get('clonePod')}, "
                    f"frozen {float(status.get('freezeSeconds', 0)) * 1000:.0f} ms",
                    file=out,
                )
                return 0
            return 1
        time.sleep(poll)
    print(
        f"clm migrate: {name} did not finish within {timeout:.0f}s (still {last[0] if last else 'Pending'}); "
        "is the coordinator running?",
        file=err,
    )
    return 1
