"""One case per row of the seed tables: supported workload types and storage types, plus
the container requirements (TTY, GPU), pod-level limits and multi-container pods."""

import pytest

from clm.policy import names
from clm.policy.eligibility import EligibilityConfig, assess
from tests.kit import builders as b


def _rs_chain() -> tuple[dict, list[dict]]:
    objs = [
        b.workload("Deployment", "web", replicas=3),
        b.workload("ReplicaSet", "web-7d4b8c9", replicas=3, owners=[b.owner("Deployment", "web")]),
    ]
    return b.pod("web-7d4b8c9-abc12", owners=[b.owner("ReplicaSet", "web-7d4b8c9")]), objs


def _job_chain(cron: bool) -> tuple[dict, list[dict]]:
    owners = [b.owner("CronJob", "nightly")] if cron else None
    objs = [b.workload("Job", "nightly-123", owners=owners, parallelism=2)]
    if cron:
        objs.append(b.workload("CronJob", "nightly"))
    return b.pod("nightly-123-xyz", owners=[b.owner("Job", "nightly-123")]), objs


# Seed 002, "Supported workload types".
WORKLOAD_ROWS = [
    (
        "StatefulSets",
        lambda: (
            b.pod("db-0", owners=[b.owner("StatefulSet", "db")]),
            [b.workload("StatefulSet", "db", replicas=3)],
        ),
        True,
        "StatefulSet",
        3,
    ),
    ("Deployments", _rs_chain, True, "Deployment", 3),
    ("Bare pods", lambda: (b.pod("lonely"), []), True, "Pod", 1),
    ("Jobs", lambda: _job_chain(cron=False), True, "Job", 2),
    ("CronJobs", lambda: _job_chain(cron=True), True, "CronJob", 2),
    (
        "Custom controllers",
        lambda: (
            b.pod("r-1", owners=[b.owner("Rollout", "r", "argoproj.io/v1alpha1")]),
            [b.workload("Rollout", "r", replicas=2)],
        ),
        False,
        "Rollout",
        2,
    ),
    (
        "DaemonSets",
        lambda: (b.pod("agent-x", owners=[b.owner("DaemonSet", "agent")]), []),
        False,
        "DaemonSet",
        1,
    ),
]


@pytest.mark.parametrize(
    ("row", "make", "eligible", "kind", "replicas"), WORKLOAD_ROWS, ids=[r[0] for r in WORKLOAD_ROWS]
)
def test_supported_workload_types(row, make, eligible, kind, replicas) -> None:
    pod, objs = make()
    result = assess(pod, b.Store(objs).lookup)
    assert result.eligible is eligible, result.reasons
    assert result.workload.kind == kind
    assert result.workload.replicas == replicas


def test_custom_controllers_can_be_allow_listed() -> None:
    pod = b.pod("r-1", owners=[b.owner("Rollout", "r", "argoproj.io/v1alpha1")])
    assert [r.code for r in assess(pod, b.Store().lookup).reasons] == ["owner-unsupported"]
    for allowed in ("Rollout", "argoproj.io/Rollout"):
        config = EligibilityConfig(allowed_custom_kinds=frozenset({allowed}))
        assert assess(pod, b.Store().lookup, config).eligible


def _with_volume(volume: dict, objs: list[dict]) -> tuple[dict, list[dict]]:
    # A StatefulSet's pod: any claim may follow it (its namesake comes after the source).
    pod = b.pod("data-0", volumes=[volume], owners=[b.owner("StatefulSet", "data")])
    return pod, [b.node("node-a", zone="us-east-1b"), b.workload("StatefulSet", "data", replicas=1), *objs]


# Seed 002, "Supported storage types" (PVC and EBS pin the destination's zone).
STORAGE_ROWS = [
    (
        "Persistent Volume Claims",
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
        [b.pvc("data-0", "pv-1"), b.pv("pv-1", zone="us-east-1a")],
        True,
        frozenset({"us-east-1a"}),
    ),
    ("Network File System", {"name": "shared", "nfs": {"server": "nfs.local", "path": "/x"}}, [], True, None),
    (
        "NFS through a PVC",
        {"name": "shared", "persistentVolumeClaim": {"claimName": "nfs"}},
        [b.pvc("nfs", "pv-nfs"), b.pv("pv-nfs", source={"nfs": {"server": "s", "path": "/"}})],
        True,
        None,
    ),
    (
        "Amazon EBS volumes",
        {"name": "ebs", "awsElasticBlockStore": {"volumeID": "vol-1"}},
        [],
        True,
        frozenset({"us-east-1b"}),
    ),
    ("EmptyDir volumes", {"name": "tmp", "emptyDir": {}}, [], True, None),
    ("ConfigMap volumes", {"name": "cfg", "configMap": {"name": "cfg"}}, [], True, None),
    ("Secret volumes", {"name": "s", "secret": {"secretName": "s"}}, [], True, None),
    ("Projected volumes", {"name": "token", "projected": {"sources": []}}, [], True, None),
    ("Host path volumes", {"name": "h", "hostPath": {"path": "/var/lib/x"}}, [], False, None),
]


@pytest.mark.parametrize(
    ("row", "volume", "objs", "eligible", "zones"), STORAGE_ROWS, ids=[r[0] for r in STORAGE_ROWS]
)
def test_storage_types(row, volume, objs, eligible, zones) -> None:
    pod, objs = _with_volume(volume, objs)
    result = assess(pod, b.Store(objs).lookup)
    assert result.eligible is eligible, result.reasons
    assert result.zones == zones


def test_host_path_is_experimental_and_switchable() -> None:
    pod, objs = _with_volume({"name": "h", "hostPath": {"path": "/x"}}, [])
    assert [r.code for r in assess(pod, b.Store(objs).lookup).reasons] == ["host-path"]
    assert assess(pod, b.Store(objs).lookup, EligibilityConfig(allow_host_path=True)).eligible


@pytest.mark.parametrize(
    ("volume", "objs", "code"),
    [
        ({"name": "x", "iscsi": {"targetPortal": "t"}}, [], "volume-unsupported"),
        ({"name": "x", "persistentVolumeClaim": {"claimName": "gone"}}, [], "pvc-missing"),
        (
            {"name": "x", "persistentVolumeClaim": {"claimName": "pending"}},
            [b.pvc("pending", None)],
            "pvc-unbound",
        ),
        (
            {"name": "x", "persistentVolumeClaim": {"claimName": "local"}},
            [b.pvc("local", "pv-l"), b.pv("pv-l", source={"local": {"path": "/mnt"}}, node_bound="node-a")],
            "node-local-volume",
        ),
    ],
)
def test_other_volumes_are_not_eligible_with_their_type(volume, objs, code) -> None:
    pod, objs = _with_volume(volume, objs)
    result = assess(pod, b.Store(objs).lookup)
    assert [r.code for r in result.reasons] == [code]
    if code == "volume-unsupported":
        assert "iscsi" in result.reasons[0].message


def test_two_zonal_volumes_intersect() -> None:
    volumes = [
        {"name": "a", "persistentVolumeClaim": {"claimName": "a"}},
        {"name": "b", "persistentVolumeClaim": {"claimName": "b"}},
    ]
    objs = [b.pvc("a", "pv-a"), b.pv("pv-a", zone="z1"), b.pvc("b", "pv-b"), b.pv("pv-b", zone="z1")]
    pod = b.pod("p-0", volumes=volumes, owners=[b.owner("StatefulSet", "p")])
    result = assess(pod, b.Store([*objs, b.workload("StatefulSet", "p", replicas=1)]).lookup)
    assert result.eligible and result.zones == frozenset({"z1"})


def test_tty_blocks_even_in_one_of_several_containers() -> None:
    pod = b.pod(containers=[b.container("app"), b.container("shell", tty=True)])
    result = assess(pod, b.Store().lookup)
    assert [r.code for r in result.reasons] == ["tty"]
    assert "'shell'" in result.reasons[0].message


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915"])
def test_gpu_requests_block(resource: str) -> None:
    gpu = b.container("train")
    gpu["resources"]["limits"] = {resource: "1"}
    assert [r.code for r in assess(b.pod(containers=[gpu]), b.Store().lookup).reasons] == ["gpu"]


@pytest.mark.parametrize(
    ("field", "code"), [("hostNetwork", "host-network"), ("hostPID", "host-pid"), ("hostIPC", "host-ipc")]
)
def test_host_namespaces_block(field: str, code: str) -> None:
    pod = b.pod()
    pod["spec"][field] = True
    assert [r.code for r in assess(pod, b.Store().lookup).reasons] == [code]


def test_static_pods_pending_and_terminating_pods_block() -> None:
    mirror = b.pod("kube-proxy-n1", owners=[b.owner("Node", "n1")], annotations={names.MIRROR_POD: "abc"})
    assert "static-pod" in [r.code for r in assess(mirror, b.Store().lookup).reasons]
    pending = b.pod(phase="Pending")
    assert [r.code for r in assess(pending, b.Store().lookup).reasons] == ["not-running"]
    terminating = b.pod()
    terminating["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    assert [r.code for r in assess(terminating, b.Store().lookup).reasons] == ["terminating"]


def test_multi_container_pods_and_init_containers_are_eligible() -> None:
    pod = b.pod(
        containers=[b.container("app"), b.container("sidecar")],
        init_containers=[b.container("migrate-db", tty=True)],
    )  # exited: its TTY is gone
    assert assess(pod, b.Store().lookup).eligible


def test_running_sidecar_init_container_with_tty_blocks() -> None:
    pod = b.pod(init_containers=[b.container("proxy", tty=True, restartPolicy="Always")])
    assert [r.code for r in assess(pod, b.Store().lookup).reasons] == ["tty"]


def test_every_reason_is_reported_not_only_the_first() -> None:
    pod = b.pod(owners=[b.owner("DaemonSet", "ds")], hostNetwork=True, containers=[b.container(tty=True)])
    codes = {r.code for r in assess(pod, b.Store().lookup).reasons}
    assert codes == {"owner-daemonset", "host-network", "tty"}


def test_opt_out_labels_are_noted_not_blocking() -> None:
    pod = b.pod(labels={names.LIVE_MIGRATION_DISABLED: "true", names.REMOVAL_DISABLED: "true"})
    result = assess(pod, b.Store().lookup)
    assert result.eligible
    assert {n.code for n in result.notes} == {"opted-out", "removal-disabled"}


@pytest.mark.parametrize("modes", [("ReadWriteOnce",), ("ReadWriteOncePod",)])
def test_a_volume_one_node_mounts_follows_only_a_statefulset_pod(modes: tuple[str, ...]) -> None:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}
    claim = [b.pvc("data-0", "pv-1", access_modes=modes), b.pv("pv-1", zone="us-east-1a")]
    bare = assess(b.pod("data-0", volumes=[volume]), b.Store([b.node("node-a"), *claim]).lookup)
    assert [r.code for r in bare.reasons] == ["volume-attached-once"]
    assert modes[0] in bare.reasons[0].message and "ReadWriteMany" in bare.reasons[0].message
    pod, objs = _with_volume(volume, claim)
    assert assess(pod, b.Store(objs).lookup).eligible


def test_a_shared_claim_follows_any_pod() -> None:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}
    objs = [
        b.node("node-a"),
        b.pvc("shared", "pv-nfs", access_modes=("ReadWriteMany",)),
        b.pv("pv-nfs", source={"nfs": {"server": "s", "path": "/"}}),
    ]
    assert assess(b.pod("web-1", volumes=[volume]), b.Store(objs).lookup).eligible
