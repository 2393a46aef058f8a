"""Seed 003's naming table, one case per row, and the clone's spec."""

import pytest

from clm.policy import names
from clm.policy.naming import MAX_NAME, clone_name, clone_spec, runtime_pod_uid, split_clone
from tests.kit import builders as b

NAMING_ROWS = [
    ("Deployments", "my-app-7d4b8c9-abc12", "Deployment", "my-app-7d4b8c9-abc12-clone-1"),
    ("StatefulSets", "my-db-0", "StatefulSet", "my-db-0"),
    ("Other workloads", "nightly-123-xyz", "Job", "nightly-123-xyz-clone-1"),
    ("Bare pods", "lonely", "Pod", "lonely-clone-1"),
]


@pytest.mark.parametrize(("row", "name", "kind", "expected"), NAMING_ROWS, ids=[r[0] for r in NAMING_ROWS])
def test_naming_table(row, name, kind, expected) -> None:
    assert clone_name(name, kind) == expected


def test_repeated_moves_count_up() -> None:
    assert clone_name("x-clone-1", "Deployment") == "x-clone-2"
    assert clone_name("x-clone-9", "Deployment") == "x-clone-10"
    assert split_clone("x-clone-0") == ("x-clone-0", 0)  # not a clone suffix


def test_taken_names_are_skipped() -> None:
    assert clone_name("x", "Deployment", taken={"x-clone-1", "x-clone-2"}) == "x-clone-3"


def test_long_names_stay_valid() -> None:
    long = "a" * 250
    name = clone_name(long, "Deployment")
    assert len(name) <= MAX_NAME and name.endswith("-clone-1")
    again = clone_name(name, "Deployment")
    assert len(again) <= MAX_NAME and again.endswith("-clone-2")
    assert clone_name("b" * 247 + "-c", "Deployment").count("--") == 0


def _pod() -> dict:
    app = b.container(
        "app",
        startupProbe={"exec": {"command": ["true"]}},
        lifecycle={
            "postStart": {"exec": {"command": ["register"]}},
            "preStop": {"exec": {"command": ["bye"]}},
        },
    )
    web = b.container(
        "web",
        startupProbe={"httpGet": {"path": "/", "port": 80}},
        lifecycle={"postStart": {"httpGet": {"path": "/hook", "port": 80}}},
    )
    pod = b.pod(
        "web-1",
        owners=[b.owner("ReplicaSet", "web-rs")],
        containers=[app, web],
        init_containers=[
            b.container("init-config"),
            b.container("init-deps"),
            b.container("proxy", restartPolicy="Always"),
        ],
    )
    pod["metadata"]["resourceVersion"] = "42"
    return pod


def test_clone_defaults_skip_init_probes_and_post_start() -> None:
    result = clone_spec(_pod(), name="web-1-clone-1", node="node-b")
    clone = result.pod
    assert result.problems == ()
    assert clone["metadata"]["name"] == "web-1-clone-1"
    assert clone["metadata"]["annotations"][names.RESTORE] == "default/web-1"
    assert clone["metadata"]["ownerReferences"][0]["name"] == "web-rs"
    assert "uid" not in clone["metadata"] and "resourceVersion" not in clone["metadata"]
    assert "status" not in clone
    assert clone["spec"]["nodeName"] == "node-b"
    assert [c["name"] for c in clone["spec"]["initContainers"]] == ["proxy"]  # the sidecar runs
    app, web = clone["spec"]["containers"]
    assert "startupProbe" not in app and "startupProbe" not in web
    assert app["lifecycle"] == {"preStop": {"exec": {"command": ["bye"]}}}
    assert "lifecycle" not in web


def test_restore_annotations_bring_them_back() -> None:
    pod = _pod()
    pod["metadata"]["annotations"].update(
        {
            names.RESTORE_RUN_INIT_CONTAINERS: "init-config",
            names.RESTORE_RUN_STARTUP_PROBE: "app, web",
            names.RESTORE_RUN_POST_START_EXEC: "app,web",
        }
    )
    clone = clone_spec(pod, name="c", node="n").pod
    assert [c["name"] for c in clone["spec"]["initContainers"]] == ["init-config", "proxy"]
    app, web = clone["spec"]["containers"]
    assert "startupProbe" in app and "startupProbe" in web
    assert "postStart" in app["lifecycle"]
    assert "lifecycle" not in web  # only exec-based PostStart hooks can be re-enabled


def test_annotation_naming_a_missing_container_is_reported() -> None:
    pod = _pod()
    pod["metadata"]["annotations"][names.RESTORE_RUN_INIT_CONTAINERS] = "init-config,init-typo"
    pod["metadata"]["annotations"][names.RESTORE_RUN_STARTUP_PROBE] = "ghost"
    problems = clone_spec(pod, name="c", node="n").problems
    assert [p.code for p in problems] == ["restore-annotation-unknown-container"] * 2
    assert "'init-typo'" in problems[0].message and "'ghost'" in problems[1].message


def test_source_pod_is_not_modified() -> None:
    pod = _pod()
    before = repr(pod)
    clone_spec(pod, name="c", node="n")
    assert repr(pod) == before


def test_a_clone_of_a_clone_keeps_the_first_pods_runtime_uid() -> None:
    first = b.pod("worker")
    clone = clone_spec(first, name="worker-clone-1", node="node-b").pod
    assert clone["metadata"]["annotations"][names.RUNTIME_POD_UID] == "uid-pod-worker"
    assert "uid" not in clone["metadata"]
    clone["metadata"]["uid"] = "uid-of-the-clone"  # the API gives the clone its own UID
    assert runtime_pod_uid(clone) == "uid-pod-worker"
    again = clone_spec(clone, name="worker-clone-2", node="node-a").pod
    assert again["metadata"]["annotations"][names.RUNTIME_POD_UID] == "uid-pod-worker"
    assert runtime_pod_uid(first) == "uid-pod-worker"


def test_a_clone_carries_the_ip_it_takes_over() -> None:
    pod = b.pod("db-0")
    pod.setdefault("status", {})["podIP"] = "10.0.0.7"
    clone = clone_spec(pod, name="db-0", node="node-b").pod
    assert clone["metadata"]["annotations"][names.RESTORE_POD_IP] == "10.0.0.7"


def test_a_clone_runs_with_the_restore_runtime_class() -> None:
    spec = clone_spec(_pod(), name="c", node="n")
    assert spec.pod["spec"]["runtimeClassName"] == names.RESTORE_RUNTIME_CLASS
    assert spec.problems == ()


def test_a_pod_with_another_runtime_class_cannot_be_cloned() -> None:
    pod = _pod()
    pod["spec"]["runtimeClassName"] = "gvisor"
    problems = clone_spec(pod, name="c", node="n").problems
    assert [p.code for p in problems] == ["restore-runtime-class"]
    assert "gvisor" in problems[0].message
