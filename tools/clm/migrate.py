"""`clm migrate NAMESPACE/POD [--to NODE] [--strategy S]`: create a Migration object for the pod and follow
its phases to the end (a watch), as the coordinator records them. `clm migrate --cancel
NAMESPACE/POD`: delete the pod's running Migrations; before the commit point the move rolls back
(the pod stays on its source), after it the deletion waits for the finish."""

from __future__ import annotations

import secrets
import sys
from typing import Any, TextIO

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts import protocol
from clm.contracts.protocol import Phase
from tools.console.migrations import create_migration, follow, migration_body, running_migrations
from tools.console.move_view import move_view


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
    view = move_view(out)

    def show(status: dict[str, Any]) -> None:
        seen.append(status.get("phase") or Phase.PENDING)
        view.show(status)

    try:
        status = follow(custom, namespace, name, timeout=timeout, on_change=show)
    finally:
        view.close()
    if status is None:
        print(
            f"clm migrate: {name} did not finish within {timeout:.0f}s "
            f"(still {seen[-1] if seen else Phase.PENDING}); is the coordinator running?",
            file=err,
        )
        return 1
    if status.get("phase") != Phase.FINISHED:
        print(f"clm migrate: {name} {status.get('phase')}: {status.get('message', '')}", file=err)
        return 1
    print(
        f"done: {pod} runs on {status.get('destinationNode')} as {status.get('clonePod')}, "
        f"frozen {float(status.get('freezeSeconds', 0)) * 1000:.0f} ms",
        file=out,
    )
    return 0


def cancel(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    *,
    wait: bool,
    timeout: float,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Delete the pod's Migrations that have not ended; with `wait`, say how each ended."""
    out, err = out or sys.stdout, err or sys.stderr
    custom = client.CustomObjectsApi(api)
    try:
        running = running_migrations(custom, namespace, pod)
    except ApiException as exc:
        print(f"clm migrate --cancel: the API answered {exc.status} {exc.reason}", file=err)
        return 1
    if not running:
        print(f"clm migrate --cancel: no migration of {namespace}/{pod} is running", file=err)
        return 1
    for m in running:
        name = m["metadata"]["name"]
        phase = (m.get("status") or {}).get("phase") or Phase.PENDING
        try:
            custom.delete_namespaced_custom_object(
                protocol.GROUP, protocol.VERSION, namespace, protocol.PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:  # gone meanwhile: it ended
                print(f"clm migrate --cancel: could not delete {name}: {exc.status} {exc.reason}", file=err)
                return 1
        print(f"cancelling migration {namespace}/{name} ({phase})", file=out, flush=True)
    if not wait:
        return 0
    code = 0
    for m in running:
        name = m["metadata"]["name"]
        status = follow(custom, namespace, name, timeout=timeout)
        if status is None:
            print(
                f"clm migrate --cancel: {name} did not end within {timeout:.0f}s"
                "; is the coordinator running?",
                file=err,
            )
            code = 1
        elif status.get("failedStage") == "cancel":
            print(f"cancelled: {pod} runs on {status.get('sourceNode')} as before", file=out)
        elif status.get("phase") == Phase.FINISHED:
            print(
                f"{name} was past its commit point: it finished, {pod} runs on "
                f"{status.get('destinationNode')} as {status.get('clonePod')}",
                file=out,
            )
            code = 1
        else:
            print(f"{name} ended before the cancel: {status.get('message', '')}", file=out)
            code = 1
    return code
