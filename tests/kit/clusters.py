"""Random clusters for property tests and benchmarks (deterministic for a given seed)."""

from __future__ import annotations

import random

from clm.policy import names
from clm.policy.binpack import NodeInfo, PodInfo, Snapshot
from clm.policy.objects import node_allocatable
from tests.kit import builders as b

GIB = 2**30
# (instance type, arch, cpu cores, memory GiB, hourly price)
SHAPES = [
    ("m5.xlarge", "amd64", 4, 16, 0.192),
    ("c5.xlarge", "amd64", 4, 8, 0.17),
    ("r5.large", "amd64", 2, 16, 0.126),
    ("m5.2xlarge", "amd64", 8, 32, 0.384),
    ("m4.xlarge", "amd64", 4, 16, 0.2),
    ("m6g.xlarge", "arm64", 4, 16, 0.154),
]
LABEL_CHOICES = [
    {names.MIGRATION_ENABLED: "true"},
    {names.MIGRATION_ENABLED: "true"},
    {names.MIGRATION_ENABLED: "true", names.REMOVAL_DISABLED: "true"},
    {names.MIGRATION_ENABLED: "true", names.LIVE_MIGRATION_DISABLED: "true"},
    {},
    {names.REMOVAL_DISABLED: "true"},
]


def random_cluster(
    rng: random.Random,
    *,
    nodes: int,
    pods_per_node: int,
    fill: float = 0.6,
    shapes: list[tuple[str, str, int, int, float]] | None = None,
    subnets: int = 2,
    pdbs: int = 2,
    variety: bool = True,
) -> Snapshot:
    """A cluster whose nodes are filled to about `fill` (never beyond allocatable)."""
    shapes = shapes or SHAPES
    node_infos: list[NodeInfo] = []
    pod_infos: list[PodInfo] = []
    for i in range(nodes):
        itype, arch, cores, mem, price = rng.choice(shapes)
        taints = (
            [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
            if variety and rng.random() < 0.05
            else None
        )
        obj = b.node(
            f"node-{i:05d}",
            cpu=str(cores),
            memory=f"{mem}Gi",
            pods=str(pods_per_node + 10),
            arch=arch,
            instance_type=itype,
            subnet=f"subnet-{rng.randrange(subnets)}",
            taints=taints,
            unschedulable=variety and rng.random() < 0.02,
        )
        node_infos.append(NodeInfo(obj["metadata"]["name"], node_allocatable(obj), obj, price))
        budget_cpu = cores * 1000 * fill * rng.uniform(0.2, 1.6)
        budget_mem = mem * GIB * fill * rng.uniform(0.2, 1.6)
        used_cpu = used_mem = 0
        for j in range(rng.randint(0, pods_per_node)):
            cpu = rng.choice((100, 250, 500, 1000))
            memory = rng.choice((128, 256, 512, 1024, 2048, 4096)) * 2**20
            if used_cpu + cpu > min(budget_cpu, cores * 1000) or used_mem + memory > min(
                budget_mem, mem * GIB
            ):
                break
            used_cpu += cpu
            used_mem += memory
            daemonset = variety and j == 0 and rng.random() < 0.5
            pod_infos.append(
                PodInfo(
                    namespace="default",
                    name=f"pod-{i:05d}-{j:03d}",
                    node=obj["metadata"]["name"],
                    requests={"cpu": cpu, "memory": memory},
                    labels=dict(rng.choice(LABEL_CHOICES)) if variety else {names.MIGRATION_ENABLED: "true"},
                    replicas=rng.choice((1, 2, 3)),
                    daemonset=daemonset,
                    pdb=f"default/pdb-{rng.randrange(pdbs)}"
                    if variety and pdbs and rng.random() < 0.2
                    else None,
                    obj=b.pod(f"pod-{i:05d}-{j:03d}", node=obj["metadata"]["name"]),
                )
            )
    return Snapshot(node_infos, pod_infos, {f"default/pdb-{k}": rng.randint(0, 2) for k in range(pdbs)})


DENSE_SHAPES = [
    ("m5.4xlarge", "amd64", 16, 64, 0.768),
    ("c5.9xlarge", "amd64", 36, 72, 1.53),
    ("r5.4xlarge", "amd64", 16, 128, 1.008),
    ("m5.8xlarge", "amd64", 32, 128, 1.536),
    ("m6i.8xlarge", "amd64", 32, 128, 1.536),
    ("m6g.8xlarge", "arm64", 32, 128, 1.232),
]


# Mostly eligible pods; a few opted out, not eligible, or protected (as in a real cluster).
DENSE_LABEL_WEIGHTS = (85, 0, 4, 5, 5, 1)


def dense_cluster(rng: random.Random, *, nodes: int, pods_per_node: int = 30) -> Snapshot:
    """Exactly `pods_per_node` pods on every node, each node 5-95 % full: the scale of
    Kubernetes' documented limits at 5,000 nodes (150,000 pods)."""
    node_infos: list[NodeInfo] = []
    pod_infos: list[PodInfo] = []
    for i in range(nodes):
        itype, arch, cores, mem, price = rng.choice(DENSE_SHAPES)
        name = f"node-{i:05d}"
        obj = b.node(
            name,
            cpu=str(cores),
            memory=f"{mem}Gi",
            pods="110",
            arch=arch,
            instance_type=itype,
            subnet=f"subnet-{rng.randrange(3)}",
        )
        node_infos.append(NodeInfo(name, node_allocatable(obj), obj, price))
        fill = rng.uniform(0.05, 0.95)
        cpu_each, mem_each = int(cores * 1000 * fill / pods_per_node), int(mem * GIB * fill / pods_per_node)
        for j in range(pods_per_node):
            pod_name = f"pod-{i:05d}-{j:02d}"
            pod_infos.append(
                PodInfo(
                    namespace=f"ns-{j % 10}",
                    name=pod_name,
                    node=name,
                    requests={
                        "cpu": max(10, int(cpu_each * rng.uniform(0.5, 1.0))),
                        "memory": max(2**20, int(mem_each * rng.uniform(0.5, 1.0))),
                    },
                    labels=dict(rng.choices(LABEL_CHOICES, DENSE_LABEL_WEIGHTS)[0]),
                    replicas=rng.choice((1, 2, 3, 3, 5)),
                    daemonset=j == 0,
                    obj=b.pod(pod_name, node=name),
                )
            )
    return Snapshot(node_infos, pod_infos, {})
