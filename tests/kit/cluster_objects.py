"""A whole cluster as Kubernetes API objects, for the emulator in benchmarks and tests:
nodes, namespaces, Deployments with their ReplicaSets, a DaemonSet, and `pods_per_node`
pods on every node (each node 5-95 % full, as `tests.kit.clusters.dense_cluster`).

Pods are owned by ReplicaSets of Deployments, one per node by the DaemonSet; a few have a
TTY or a hostPath volume (not eligible). `labeled=True` gives pods the labels the labeler
and the user would have set (the planner's input); `labeled=False` only the user's (the
labeler's first assessment). Deterministic for a given seed.
"""

from __future__ import annotations

import random
from typing import Any

from clm.policy import names
from tests.kit import builders as b
from tests.kit.clusters import DENSE_SHAPES, GIB

Obj = dict[str, Any]
NAMESPACES = 10
APPS_PER_NAMESPACE = 500
STAMP = "2026-01-01T00:00:00Z"


def _meta(obj: Obj, uid: str) -> Obj:
    obj["metadata"].update(uid=uid, resourceVersion="1", creationTimestamp=STAMP)
    return obj


def _owned(kind: str, name: str, api_version: str) -> list[Obj]:
    return [
        {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "uid": f"uid-{kind}-{name}",
            "controller": True,
        }
    ]


def _workloads() -> list[Obj]:
    out: list[Obj] = []
    for n in range(NAMESPACES):
        ns = f"ns-{n}"
        out.append(
            _meta(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                },
                f"uid-ns-{n}",
            )
        )
        for a in range(APPS_PER_NAMESPACE):
            app = f"app-{a:03d}"
            selector = {"matchLabels": {"app": app}}
            template = {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "app"}]}}
            out.append(
                _meta(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": app, "namespace": ns},
                        "spec": {"replicas": 3, "selector": selector, "template": template},
                    },
                    f"uid-Deployment-{ns}-{app}",
                )
            )
            out.append(
                _meta(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "metadata": {
                            "name": f"{app}-rs",
                            "namespace": ns,
                            "ownerReferences": _owned("Deployment", app, "apps/v1"),
                        },
                        "spec": {"replicas": 3, "selector": selector, "template": template},
                    },
                    f"uid-ReplicaSet-{ns}-{app}",
                )
            )
    selector = {"matchLabels": {"app": "node-agent"}}
    out.append(
        _meta(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "node-agent", "namespace": "ns-0"},
                "spec": {
                    "selector": selector,
                    "template": {
                        "metadata": {"labels": {"app": "node-agent"}},
                        "spec": {"containers": [{"name": "agent"}]},
                    },
                },
            },
            "uid-DaemonSet-node-agent",
        )
    )
    return out


# (user labels, weight): mostly nothing; some opted out or protected.
USER_LABELS: tuple[tuple[dict[str, str], int], ...] = (
    ({}, 90),
    ({names.LIVE_MIGRATION_DISABLED: "true"}, 5),
    ({names.REMOVAL_DISABLED: "true"}, 5),
)


def dense_cluster_objects(
    nodes: int,
    pods_per_node: int = 30,
    *,
    seed: int = 0,
    labeled: bool = True,
    ineligible_share: float = 0.04,
) -> list[Obj]:
    rng = random.Random(seed)
    out = _workloads()
    user_choices = tuple(labels for labels, _ in USER_LABELS)
    weights = tuple(weight for _, weight in USER_LABELS)
    for i in range(nodes):
        itype, arch, cores, mem, _ = rng.choice(DENSE_SHAPES)
        name = f"node-{i:05d}"
        node = b.node(
            name,
            cpu=str(cores),
            memory=f"{mem}Gi",
            pods="110",
            arch=arch,
            instance_type=itype,
            subnet=f"subnet-{rng.randrange(3)}",
            migration_enabled=labeled,
        )
        node["status"]["capacity"] = dict(node["status"]["allocatable"])
        out.append(_meta(node, f"uid-node-{i}"))
        fill = rng.uniform(0.05, 0.95)
        cpu_each, mem_each = cores * 1000 * fill / pods_per_node, mem * GIB * fill / pods_per_node
        for j in range(pods_per_node):
            cpu = max(10, int(cpu_each * rng.uniform(0.5, 1.0)))
            memory = max(2**20, int(mem_each * rng.uniform(0.5, 1.0)))
            out.append(
                _pod(
                    rng,
                    i,
                    j,
                    name,
                    cpu,
                    memory,
                    labeled=labeled,
                    user_choices=user_choices,
                    weights=weights,
                    ineligible_share=ineligible_share,
                )
            )
    return out


def _pod(
    rng: random.Random,
    i: int,
    j: int,
    node: str,
    cpu: int,
    memory: int,
    *,
    labeled: bool,
    user_choices: tuple[dict[str, str], ...],
    weights: tuple[int, ...],
    ineligible_share: float,
) -> Obj:
    container: Obj = {
        "name": "app",
        "image": "registry.example/app:1.2.3",
        "resources": {"requests": {"cpu": f"{cpu}m", "memory": str(memory)}},
    }
    volumes: list[Obj] = [{"name": "cfg", "configMap": {"name": "cfg"}}]
    if j == 0:
        ns, labels = "ns-0", {"app": "node-agent"}
        owners = _owned("DaemonSet", "node-agent", "apps/v1")
        eligible = False
    else:
        ns = f"ns-{j % NAMESPACES}"
        app = f"app-{rng.randrange(APPS_PER_NAMESPACE):03d}"
        labels = {"app": app, **rng.choices(user_choices, weights)[0]}
        owners = _owned("ReplicaSet", f"{app}-rs", "apps/v1")
        eligible = rng.random() >= ineligible_share
        if not eligible:
            if rng.random() < 0.5:
                container["tty"] = container["stdin"] = True
            else:
                volumes.append({"name": "data", "hostPath": {"path": "/srv/data"}})
    if labeled and eligible:
        labels[names.MIGRATION_ENABLED] = names.TRUE
    name = f"pod-{i:05d}-{j:02d}"
    return _meta(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owners},
            "spec": {"nodeName": node, "containers": [container], "volumes": volumes},
            "status": {"phase": "Running", "podIP": f"10.{i // 256 % 256}.{i % 256}.{j + 2}"},
        },
        f"uid-pod-{i}-{j}",
    )


def eligible_count(objects: list[Obj]) -> int:
    """How many pods the generator made eligible (what the labeler should label)."""
    count = 0
    for obj in objects:
        if obj["kind"] != "Pod":
            continue
        spec = obj["spec"]
        owner = obj["metadata"]["ownerReferences"][0]["kind"]
        if owner == "DaemonSet" or spec["containers"][0].get("tty") or len(spec["volumes"]) > 1:
            continue
        count += 1
    return count
