"""`clm migrate NAMESPACE/POD [--to NODE] [--strategy S]`: create a Migration object for the pod and follow
its phases to the end (a watch), as the coordinator records them."""

from __future__ import annotations

import secrets
import sys
from typing import Any, TextIO

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts.protocol import Phase
from tools.console.migrations import create_migration, follow, migration_body


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
    strategy: str | None = None,
    timeout: float,
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
    try:
        create_migration(custom, namespace, migration_body(name, pod, destination=to, strategy=strategy))
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
    seen: list[str] = []

    def show(status: dict[str, Any]) -> None:
        phase = status.get("phase") or Phase.PENDING
        seen.append(phase)
        print(f"  {phase}: {status.get('message', '')}", file=out, flush=True)

    status = follow(custom, namespace, name, timeout=timeout, on_change=show)
    if status is None:
        print(
            f"clm migrate: {name} did not finish within {timeout:.0f}s "
            f"(still {seen[-1] if seen else Phase.PENDING}); is the coordinator running?",
            file=err,
        )
        return 1
    if status.get("phase") != Phase.FINISHED:
        return 1
    print(
        f"done: {pod} runs on {status.get('destinationNode')} as {status.get('clonePod')}, "
        f"frozen {float(status.get('freezeSeconds', 0)) * 1000:.0f} ms",
        file=out,
    )
    return 0
