"""The resource types the emulator serves: built-in ones and those CRDs add."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any


@dataclass
class Column:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    _: KW_ONLY
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = True
    # Whether writes to .spec bump metadata.generation (workloads and custom resources).
    tracks_generation: bool = False
    columns: list[Column] = field(default_factory=list)
    # OpenAPI v3 schema of a custom resource (None: not validated).
    schema: dict[str, Any] | None = None
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def verbs(self) -> list[str]:
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _age() -> Column:
    return Column("Age", "date", ".metadata.creationTimestamp")


def _core() -> list[ResourceType]:
    pod_columns = [
        Column("Ready", "string", ".status.containerStatuses"),  # rendered specially
        Column("Status", "string", ".status.phase"),
        Column("Restarts", "integer", ".status.containerStatuses"),
        _age(),
        Column("IP", "string", ".status.podIP", priority=1),
        Column("Node", "string", ".spec.nodeName", priority=1),
    ]
    node_columns = [
        Column("Status", "string", ".status.conditions"),
        _age(),
        Column("Version", "string", ".status.nodeInfo.kubeletVersion"),
    ]
    return [
        ResourceType(
            "",
            "v1",
            "Namespace",
            "namespaces",
            namespaced=False,
            short_names=("ns",),
            columns=[Column("Status", "string", ".status.phase"), _age()],
        ),
        ResourceType("", "v1", "Node", "nodes", namespaced=False, short_names=("no",), columns=node_columns),
        ResourceType(
            "",
            "v1",
            "Pod",
            "pods",
            namespaced=True,
            short_names=("po",),
            columns=pod_columns,
            categories=("all",),
        ),
        ResourceType(
            "",
            "v1",
            "Event",
            "events",
            namespaced=True,
            short_names=("ev",),
            status_subresource=False,
            columns=[
                Column("Type", "string", ".type"),
                Column("Reason", "string", ".reason"),
                Column("Object", "string", ".involvedObject.name"),
                Column("Message", "string", ".message"),
            ],
        ),
        ResourceType(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            namespaced=True,
            short_names=("pvc",),
            columns=[
                Column("Status", "string", ".status.phase"),
                Column("Volume", "string", ".spec.volumeName"),
                _age(),
            ],
        ),
        ResourceType(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            namespaced=False,
            short_names=("pv",),
            columns=[Column("Status", "string", ".status.phase"), _age()],
        ),
        ResourceType(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            namespaced=True,
            short_names=("cm",),
            status_subresource=False,
            columns=[_age()],
        ),
        ResourceType(
            "",
            "v1",
            "Secret",
            "secrets",
            namespaced=True,
            short_names=(),
            status_subresource=False,
            columns=[_age()],
        ),
        ResourceType(
            "",
            "v1",
            "Service",
            "services",
            namespaced=True,
            short_names=("svc",),
            columns=[_age()],
            categories=("all",),
        ),
        ResourceType(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            namespaced=True,
            short_names=("sa",),
            status_subresource=False,
            columns=[_age()],
        ),
    ]


def _apps() -> list[ResourceType]:
    replicas = [
        Column("Desired", "integer", ".spec.replicas"),
        Column("Ready", "integer", ".status.readyReplicas"),
        _age(),
    ]
    return [
        ResourceType(
            "apps",
            "v1",
            kind,
            plural,
            namespaced=True,
            short_names=short,
            tracks_generation=True,
            columns=list(replicas),
            categories=("all",),
        )
        for kind, plural, short in (
            ("Deployment", "deployments", ("deploy",)),
            ("ReplicaSet", "replicasets", ("rs",)),
            ("StatefulSet", "statefulsets", ("sts",)),
            ("DaemonSet", "daemonsets", ("ds",)),
        )
    ]


def _batch() -> list[ResourceType]:
    return [
        ResourceType(
            "batch",
            "v1",
            "Job",
            "jobs",
            namespaced=True,
            short_names=(),
            tracks_generation=True,
            columns=[Column("Completions", "integer", ".spec.completions"), _age()],
            categories=("all",),
        ),
        ResourceType(
            "batch",
            "v1",
            "CronJob",
            "cronjobs",
            namespaced=True,
            short_names=("cj",),
            tracks_generation=True,
            columns=[Column("Schedule", "string", ".spec.schedule"), _age()],
            categories=("all",),
        ),
    ]


def _others() -> list[ResourceType]:
    return [
        ResourceType(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            namespaced=True,
            short_names=("pdb",),
            tracks_generation=True,
            columns=[
                Column("Min Available", "string", ".spec.minAvailable"),
                Column("Max Unavailable", "string", ".spec.maxUnavailable"),
                Column("Allowed Disruptions", "integer", ".status.disruptionsAllowed"),
                _age(),
            ],
        ),
        ResourceType(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            namespaced=True,
            short_names=("ev",),
            status_subresource=False,
            columns=[
                Column("Type", "string", ".type"),
                Column("Reason", "string", ".reason"),
                Column("Object", "string", ".regarding.name"),
                Column("Note", "string", ".note"),
            ],
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            namespaced=False,
            short_names=("crd", "crds"),
            tracks_generation=True,
            columns=[Column("Created At", "date", ".metadata.creationTimestamp")],
        ),
        ResourceType(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            namespaced=True,
            short_names=(),
            status_subresource=False,
            columns=[Column("Holder", "string", ".spec.holderIdentity"), _age()],
        ),
    ]


def _builtin() -> list[ResourceType]:
    """The built-in resource types the emulator serves, as a 1.30 API server lists them."""
    return _core() + _apps() + _batch() + _others()


class Registry:
    def __init__(self) -> None:
        self.types: dict[tuple[str, str, str], ResourceType] = {}  # (group, version, plural)
        for rt in _builtin():
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt

    def remove_group_resource(self, group: str, plural: str) -> None:
        for key in [k for k in self.types if k[0] == group and k[2] == plural]:
            del self.types[key]

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        return None

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for group, version, _ in self.types:
            if group and version not in out.setdefault(group, []):
                out[group].append(version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for (g, v, _), rt in self.types.items() if g == group and v == version]
