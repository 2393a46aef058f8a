"""A fragmented sandbox cluster for the evictor-planner to bin-pack (sandbox code).

Three nodes of 2 CPUs. sbx-1 is nearly idle; its pods fit on the other two (the plan puts
each on the fullest node with room), so draining it is the plan. sbx-2 is nearly full (a
pod that fits nowhere else) and sbx-3 holds a protected pod, so neither can be drained.
On sbx-1, one pod for each path of the label matrix in default mode:

| pod (namespace binpack) | node  | owner                          | Evictor's action |
| game-0                  | sbx-1 | StatefulSet game (2 replicas)  | live-migrate, keeps its name |
| game-1                  | sbx-2 | StatefulSet game               | stays (sbx-2 is not drained) |
| web-6d4cf56db6-k7x2p    | sbx-1 | ReplicaSet of Deployment web (2 replicas) | live-migrate, as `-clone-1` |
| web-6d4cf56db6-q9r4s    | sbx-3 | ReplicaSet of Deployment web   | stays |
| report                  | sbx-1 | none; live-migration-disabled  | evicted |
| ledger                  | sbx-3 | none; removal- and live-migration-disabled | protected: stays |
| reserved-sbx-2          | sbx-2 | none, 1800m CPU                | stays (fits nowhere else) |

game-0 and game-1 run the stateful game server the demo uses (a player can hold a
connection to game-0 across its move); the others idle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts import protocol
from clm.policy import names
from tests.kit import builders as b
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.workloads import stateful_server

NAMESPACE = "binpack"
GAME_PORT = 7000
REPLICASET = "web-6d4cf56db6"
IDLE = ["python3.11", "-c", "import time\nwhile True: time.sleep(1)"]

# name -> (node, owner kind and name or None, extra labels, cpu request)
PODS: dict[str, tuple[str, tuple[str, str] | None, dict[str, str], str]] = {
    "game-0": ("sbx-1", ("StatefulSet", "game"), {"app": "game"}, "100m"),
    "game-1": ("sbx-2", ("StatefulSet", "game"), {"app": "game"}, "100m"),
    f"{REPLICASET}-k7x2p": ("sbx-1", ("ReplicaSet", REPLICASET), {"app": "web"}, "100m"),
    f"{REPLICASET}-q9r4s": ("sbx-3", ("ReplicaSet", REPLICASET), {"app": "web"}, "100m"),
    "report": ("sbx-1", None, {names.LIVE_MIGRATION_DISABLED: names.TRUE}, "100m"),
    "ledger": (
        "sbx-3",
        None,
        {names.REMOVAL_DISABLED: names.TRUE, names.LIVE_MIGRATION_DISABLED: names.TRUE},
        "100m",
    ),
    "reserved-sbx-2": ("sbx-2", None, {}, "1800m"),
}
DRAINED = "sbx-1"
MIGRATED = {"game-0": "game-0", f"{REPLICASET}-k7x2p": f"{REPLICASET}-k7x2p-clone-1"}
EVICTED = ["report"]
STAY = ["game-1", f"{REPLICASET}-q9r4s", "ledger", "reserved-sbx-2"]


def _container(name: str, state_mib: int) -> dict[str, Any]:
    server = Path(stateful_server.__file__).read_text()
    if name.startswith("game-"):
        command = ["python3.11", "-u", "-c", server, str(state_mib)]
        memory = f"{state_mib + 64}Mi"
    else:
        command, memory = IDLE, "64Mi"
    cpu = PODS[name][3]
    return {
        "name": "main",
        "image": POD_IMAGE,
        "command": command,
        "resources": {"requests": {"cpu": cpu, "memory": memory}},
    }


def deploy(api: client.ApiClient, state_mib: int = 32) -> None:
    """The owners (the emulator has no controllers: their objects only say how many
    replicas each workload has) and the pods, bound to their nodes."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    template = {
        "metadata": {"labels": {"app": "game"}},
        "spec": {"containers": [_container("game-0", state_mib)]},
    }
    apps.create_namespaced_stateful_set(
        NAMESPACE,
        {
            "metadata": {"name": "game"},
            "spec": {
                "replicas": 2,
                "serviceName": "game",
                "selector": {"matchLabels": {"app": "game"}},
                "template": template,
            },
        },
    )
    web = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [_container(f"{REPLICASET}-k7x2p", state_mib)]},
    }
    apps.create_namespaced_deployment(
        NAMESPACE,
        {
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": web},
        },
    )
    apps.create_namespaced_replica_set(
        NAMESPACE,
        {
            "metadata": {"name": REPLICASET, "ownerReferences": [b.owner("Deployment", "web")]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": web},
        },
    )
    for name, (node, owner, labels, _cpu) in PODS.items():
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owner is not None:
            meta["ownerReferences"] = [b.owner(*owner)]
        core.create_namespaced_pod(
            NAMESPACE,
            {"metadata": meta, "spec": {"nodeName": node, "containers": [_container(name, state_mib)]}},
        )


def pods(api: client.ApiClient) -> dict[str, Any]:
    return {p.metadata.name: p for p in client.CoreV1Api(api).list_namespaced_pod(NAMESPACE).items}


def ready_to_plan(api: client.ApiClient) -> bool:
    """Every pod runs, every node is labeled from its agent, the pods to move are labeled."""
    core, now = client.CoreV1Api(api), pods(api)
    running = all(n in now and now[n].status.phase == "Running" and now[n].status.pod_ip for n in PODS)
    nodes = {PODS[n][0] for n in PODS}
    labeled_nodes = all(
        (core.read_node(n).metadata.labels or {}).get(names.MIGRATION_ENABLED) == names.TRUE for n in nodes
    )
    labeled_pods = running and all(
        (now[n].metadata.labels or {}).get(names.MIGRATION_ENABLED) == names.TRUE for n in MIGRATED
    )
    return running and labeled_nodes and labeled_pods


def drained(api: client.ApiClient) -> bool:
    """The drained node holds no pod and the moved pods run elsewhere."""
    now = pods(api)
    return all(n in now and now[n].status.phase == "Running" for n in MIGRATED.values()) and not any(
        p.spec.node_name == DRAINED for p in now.values()
    )


def describe(api: client.ApiClient) -> str:
    """The cluster as the planner and coordinator left it: each pod's node and phase, each
    node's cordon, each Migration's phase and reason — what a failed wait should show."""
    core = client.CoreV1Api(api)
    lines = [
        f"pod {name}: node={p.spec.node_name} phase={p.status.phase} ip={p.status.pod_ip}"
        f" deleting={p.metadata.deletion_timestamp is not None}"
        for name, p in sorted(pods(api).items())
    ]
    for node in core.list_node().items:
        lines.append(f"node {node.metadata.name}: unschedulable={bool(node.spec.unschedulable)}")
    migrations = client.CustomObjectsApi(api).list_namespaced_custom_object(
        protocol.GROUP, protocol.VERSION, NAMESPACE, protocol.PLURAL
    )["items"]
    for m in migrations:
        status = m.get("status") or {}
        lines.append(
            f"migration {m['metadata']['name']}: pod={m['spec'].get('podName')}"
            f" to={m['spec'].get('destinationNode')} phase={status.get('phase')}"
            f" reason={status.get('failureReason')}"
        )
    return "\n".join(lines)


def placement(api: client.ApiClient) -> dict[str, tuple[str, str]]:
    """pod -> (node, IP) as the API has it now."""
    return {name: (p.spec.node_name, p.status.pod_ip or "") for name, p in pods(api).items()}


def outcome_rows(
    before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]]
) -> list[dict[str, str]]:
    """One row per original pod: where it was, where it is (as which pod), what happened."""
    rows = []
    for name, (node, ip) in before.items():
        now_name = MIGRATED.get(name, name)
        if now_name not in after:
            rows.append({"pod": name, "was_on": node, "now": "-", "what": "evicted"})
            continue
        new_node, new_ip = after[now_name]
        if new_node == node:
            what = "stayed"
        elif name in MIGRATED:
            what = "moved live" + (", same IP" if new_ip == ip else ", NEW IP")
        else:
            what = "moved (not in the plan)"
        rows.append({"pod": name, "was_on": node, "now": f"{now_name} on {new_node}", "what": what})
    return rows


def as_expected(rows: list[dict[str, str]]) -> bool:
    what = {r["pod"]: r["what"] for r in rows}
    return (
        all(what.get(n) == "moved live, same IP" for n in MIGRATED)
        and all(what.get(n) == "evicted" for n in EVICTED)
        and all(what.get(n) == "stayed" for n in STAY)
    )
