"""Builders of Kubernetes-shaped objects for tests, examples and benchmarks."""

from __future__ import annotations

from typing import Any

from clm.policy import names


def owner(kind: str, name: str, api_version: str | None = None) -> dict[str, Any]:
    default_api = {
        "ReplicaSet": "apps/v1",
        "StatefulSet": "apps/v1",
        "DaemonSet": "apps/v1",
        "Deployment": "apps/v1",
        "Job": "batch/v1",
        "CronJob": "batch/v1",
        "Node": "v1",
    }
    return {
        "apiVersion": api_version or default_api.get(kind, "example.com/v1"),
        "kind": kind,
        "name": name,
        "uid": f"uid-{kind}-{name}",
        "controller": True,
    }


def container(
    name: str = "app", *, cpu: str | None = "100m", memory: str | None = "128Mi", **extra: Any
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": name, "image": "example/app:1", "resources": {"requests": requests}, **extra}


def pod(
    name: str = "app-0",
    namespace: str = "default",
    *,
    node: str = "node-a",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    **spec_extra: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-pod-{name}",
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    if owners:
        metadata["ownerReferences"] = owners
    spec: dict[str, Any] = {"nodeName": node, "containers": containers or [container()], **spec_extra}
    if init_containers:
        spec["initContainers"] = init_containers
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": phase}}


def node(
    name: str = "node-a",
    *,
    cpu: str = "4",
    memory: str = "16Gi",
    pods: str = "110",
    arch: str = "amd64",
    instance_type: str = "m5.xlarge",
    zone: str = "us-east-1a",
    subnet: str = "subnet-1",
    migration_enabled: bool = True,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, Any]] | None = None,
    unschedulable: bool = False,
    kubelet: str = "v1.30.4-eks-a737599",
    runtime: str = "containerd://2.0.2",
    os_image: str = "Amazon Linux 2023.6.20241212",
) -> dict[str, Any]:
    node_labels = {
        names.ARCH: arch,
        names.INSTANCE_TYPE: instance_type,
        names.ZONE: zone,
        names.SUBNET_ID: subnet,
        names.HOSTNAME: name,
    }
    if migration_enabled:
        node_labels[names.MIGRATION_ENABLED] = names.TRUE
    node_labels.update(labels or {})
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
            "nodeInfo": {
                "kubeletVersion": kubelet,
                "containerRuntimeVersion": runtime,
                "osImage": os_image,
                "architecture": arch,
            },
        },
    }


def workload(
    kind: str,
    name: str,
    namespace: str = "default",
    *,
    replicas: int | None = None,
    owners: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{kind}-{name}"}
    if owners:
        metadata["ownerReferences"] = owners
    if replicas is not None:
        spec["replicas"] = replicas
    return {"kind": kind, "metadata": metadata, "spec": spec}


def pvc(
    name: str,
    volume: str | None,
    namespace: str = "default",
    *,
    access_modes: tuple[str, ...] = ("ReadWriteOnce",),
) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": list(access_modes)}
    if volume:
        spec["volumeName"] = volume
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pv(
    name: str, *, zone: str | None = None, source: dict[str, Any] | None = None, node_bound: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = dict(source or {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}})
    terms = []
    if zone:
        terms.append({"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [zone]})
    if node_bound:
        terms.append({"key": names.HOSTNAME, "operator": "In", "values": [node_bound]})
    if terms:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": terms}]}}
    return {"kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}


class Store:
    """A dict-backed lookup: `Store(objs).lookup(kind, namespace, name)`."""

    def __init__(self, objs: list[dict[str, Any]] | None = None) -> None:
        self.objs: dict[tuple[str, str, str], dict[str, Any]] = {}
        for obj in objs or []:
            self.add(obj)

    def add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objs[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objs.get((kind, namespace, name))
