"""The Kubernetes API emulator, driven only through the official Python client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tools.kube_emulator.testing import EmulatorThread, api_client, running_emulator

CRD = Path("deploy/kustomize/base/crds/migrations.live.cast.ai.yaml")


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with running_emulator(bookmark_seconds=0.5) as emu:
        yield emu


@pytest.fixture
def core(emulator: EmulatorThread) -> client.CoreV1Api:
    return client.CoreV1Api(api_client(emulator.url))


def pod(name: str, node: str = "node-a", labels: dict | None = None, phase: str = "Running") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": phase},
    }


def create_running(core: client.CoreV1Api, body: dict, ns: str = "default") -> None:
    created = core.create_namespaced_pod(ns, body)
    core.patch_namespaced_pod_status(
        created.metadata.name, ns, {"status": {"phase": body["status"]["phase"]}}
    )


def install_crd(emulator: EmulatorThread) -> client.CustomObjectsApi:
    ext = client.ApiextensionsV1Api(api_client(emulator.url))
    ext.create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
    return client.CustomObjectsApi(api_client(emulator.url))


def status_of(exc: ApiException) -> dict:
    import json

    return json.loads(exc.body)


def test_crud_and_server_set_metadata(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod("p1"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    rv1 = int(created.metadata.resource_version)
    fetched = core.read_namespaced_pod("p1", "default")
    assert fetched.metadata.uid == created.metadata.uid
    patched = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"a": "b"}}})
    assert patched.metadata.labels == {"a": "b"} and int(patched.metadata.resource_version) > rv1
    fetched.metadata.annotations = {"note": "x"}
    fetched.metadata.labels = {"a": "b"}
    fetched.metadata.resource_version = patched.metadata.resource_version
    replaced = core.replace_namespaced_pod("p1", "default", fetched)
    assert replaced.metadata.annotations == {"note": "x"}
    core.delete_namespaced_pod("p1", "default")
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod("p1", "default")
    assert info.value.status == 404
    body = status_of(info.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404
    assert body["message"] == 'pods "p1" not found'


def test_errors_have_the_status_shape(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("dup"))
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("default", pod("dup"))
    assert info.value.status == 409 and status_of(info.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("nowhere", pod("x"))
    assert info.value.status == 404 and 'namespaces "nowhere" not found' in status_of(info.value)["message"]
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("default", pod("Bad_Name"))
    assert (
        info.value.status == 422 and status_of(info.value)["details"]["causes"][0]["field"] == "metadata.name"
    )


def test_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_pod("default", pod("c1"))
    core.patch_namespaced_pod("c1", "default", {"metadata": {"labels": {"v": "2"}}})
    first.metadata.labels = {"v": "stale"}
    with pytest.raises(ApiException) as info:
        core.replace_namespaced_pod("c1", "default", first)
    assert info.value.status == 409 and status_of(info.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod(
            "c1",
            "default",
            {"metadata": {"resourceVersion": first.metadata.resource_version, "labels": {"v": "3"}}},
        )
    assert info.value.status == 409


def test_patch_types(core: client.CoreV1Api, emulator: EmulatorThread) -> None:
    body = pod("pt")
    body["spec"]["containers"].append({"name": "side", "image": "s"})
    core.create_namespaced_pod("default", body)
    # Strategic merge (the client's default for dicts): containers merge by name.
    out = core.patch_namespaced_pod(
        "pt", "default", {"spec": {"containers": [{"name": "app", "image": "v2"}]}}
    )
    assert [(c.name, c.image) for c in out.spec.containers] == [("app", "v2"), ("side", "s")]
    # JSON patch (the client sends a list as application/json-patch+json).
    out = core.patch_namespaced_pod(
        "pt", "default", [{"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}]
    )
    assert out.metadata.labels == {"k": "v"}
    # JSON merge patch on a custom resource (replaces lists, deletes with null).
    custom = install_crd(emulator)
    custom.create_namespaced_custom_object(
        "live.cast.ai",
        "v1",
        "default",
        "migrations",
        {
            "apiVersion": "live.cast.ai/v1",
            "kind": "Migration",
            "metadata": {"name": "m"},
            "spec": {"podName": "pt", "destinationNode": "node-b"},
        },
    )
    patched = custom.patch_namespaced_custom_object(
        "live.cast.ai", "v1", "default", "migrations", "m", {"spec": {"destinationNode": None}}
    )
    assert "destinationNode" not in patched["spec"]


def test_label_and_field_selectors(core: client.CoreV1Api) -> None:
    create_running(core, pod("a1", "node-a", {"app": "web", "tier": "front"}))
    create_running(core, pod("a2", "node-a", {"app": "db"}))
    create_running(core, pod("b1", "node-b", {"app": "web"}, phase="Pending"))

    def names(**kw) -> list[str]:
        return sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items)

    assert names(label_selector="app=web") == ["a1", "b1"]
    assert names(label_selector="app in (web,db),!tier") == ["a2", "b1"]
    assert names(field_selector="spec.nodeName=node-a") == ["a1", "a2"]
    assert names(field_selector="status.phase=Running,spec.nodeName!=node-b") == ["a1", "a2"]
    assert names(field_selector="metadata.name=b1") == ["b1"]
    assert names(label_selector="app=web", field_selector="spec.nodeName=node-b") == ["b1"]


def test_pagination(core: client.CoreV1Api) -> None:
    for i in range(7):
        core.create_namespaced_pod("default", pod(f"page-{i}"))
    seen, token = [], None
    while True:
        page = core.list_namespaced_pod("default", limit=3, _continue=token)
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"page-{i}" for i in range(7)]


def test_watch_resumes_after_a_dropped_connection(core: client.CoreV1Api) -> None:
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("w1"))
    events = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name))
        last_rv = event["object"].metadata.resource_version
        w.stop()  # the connection drops here
    assert events == [("ADDED", "w1")]
    # Changes while nobody watches...
    core.patch_namespaced_pod("w1", "default", {"metadata": {"labels": {"x": "1"}}})
    core.create_namespaced_pod("default", pod("w2"))
    core.delete_namespaced_pod("w1", "default")
    # ...are all delivered, in order, to a watch resumed from the last seen resourceVersion.
    resumed = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod, "default", resource_version=last_rv, timeout_seconds=1
    ):
        resumed.append((event["type"], event["object"].metadata.name))
    assert resumed == [("MODIFIED", "w1"), ("ADDED", "w2"), ("DELETED", "w1")]


def test_watch_without_resource_version_starts_with_current_objects(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("existing"))

    def later() -> None:
        time.sleep(0.3)
        core.create_namespaced_pod("default", pod("new"))

    threading.Thread(target=later).start()
    got = []
    for event in watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=2):
        got.append((event["type"], event["object"].metadata.name))
    assert got == [("ADDED", "existing"), ("ADDED", "new")]


def test_watch_too_old_resource_version_is_gone() -> None:
    with running_emulator(history=5) as emu:
        core = client.CoreV1Api(api_client(emu.url))
        for i in range(10):
            core.create_namespaced_pod("default", pod(f"h{i}"))
        with pytest.raises(ApiException) as info:
            for _ in watch.Watch().stream(
                core.list_namespaced_pod, "default", resource_version="2", timeout_seconds=1
            ):
                pass
        assert info.value.status == 410


def test_watch_bookmarks_and_selector_transitions(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    create_running(core, pod("sel", labels={"app": "web"}))
    core.patch_namespaced_pod("sel", "default", {"metadata": {"labels": {"app": "db"}}})
    types = []
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        "default",
        resource_version=rv,
        label_selector="app=web",
        allow_watch_bookmarks=True,
        timeout_seconds=2,
    ):
        types.append(event["type"])
        if event["type"] == "BOOKMARK":
            break
    # Added, its status changed, then it stopped matching app=web: DELETED for this watch.
    assert types == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


def test_status_subresource(emulator: EmulatorThread) -> None:
    custom = install_crd(emulator)
    args = ("live.cast.ai", "v1", "default", "migrations")
    custom.create_namespaced_custom_object(
        *args,
        {
            "apiVersion": "live.cast.ai/v1",
            "kind": "Migration",
            "metadata": {"name": "s"},
            "spec": {"podName": "p"},
            "status": {"phase": "Finished"},
        },
    )
    obj = custom.get_namespaced_custom_object(*args, "s")
    assert "status" not in obj  # status is only written through the subresource
    obj["status"] = {"phase": "Dumping", "freezeSeconds": 0.4}
    custom.replace_namespaced_custom_object_status(*args, "s", obj)
    obj = custom.get_namespaced_custom_object(*args, "s")
    assert obj["status"]["phase"] == "Dumping" and obj["metadata"]["generation"] == 1
    obj["spec"]["destinationNode"] = "node-b"
    obj["status"]["phase"] = "Failed"
    obj = custom.replace_namespaced_custom_object(*args, "s", obj)
    assert obj["status"]["phase"] == "Dumping"  # the main resource ignores status...
    assert obj["metadata"]["generation"] == 2  # ...and a spec change bumps the generation
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object_status(*args, "s", {"status": {"phase": "Exploded"}})
    assert info.value.status == 422 and "status.phase: Unsupported value" in status_of(info.value)["message"]


def test_custom_resource_validation_names_the_field(emulator: EmulatorThread) -> None:
    custom = install_crd(emulator)
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            "live.cast.ai",
            "v1",
            "default",
            "migrations",
            {
                "apiVersion": "live.cast.ai/v1",
                "kind": "Migration",
                "metadata": {"name": "bad"},
                "spec": {"strategy": "teleport"},
            },
        )
    body = status_of(info.value)
    assert info.value.status == 422 and body["reason"] == "Invalid"
    fields = sorted(c["field"] for c in body["details"]["causes"])
    assert fields == ["spec.podName", "spec.strategy"]
    assert 'Migration.live.cast.ai "bad" is invalid' in body["message"]
    ok = custom.create_namespaced_custom_object(
        "live.cast.ai",
        "v1",
        "default",
        "migrations",
        {
            "apiVersion": "live.cast.ai/v1",
            "kind": "Migration",
            "metadata": {"name": "good"},
            "spec": {"podName": "p", "unknown": 1},
        },
    )
    assert ok["spec"] == {"podName": "p", "strategy": "auto"}  # pruned, defaulted


def test_eviction_honours_pod_disruption_budgets(core: client.CoreV1Api, emulator: EmulatorThread) -> None:
    policy = client.PolicyV1Api(api_client(emulator.url))
    for i in range(2):
        create_running(core, pod(f"web-{i}", labels={"app": "web"}))
    policy.create_namespaced_pod_disruption_budget(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        },
    )
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-0", "namespace": "default"},
    }
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod_eviction("web-0", "default", eviction)
    assert info.value.status == 429
    assert status_of(info.value)["details"]["causes"][0]["reason"] == "DisruptionBudget"
    pdb = policy.read_namespaced_pod_disruption_budget("web", "default")
    assert (pdb.status.current_healthy, pdb.status.desired_healthy, pdb.status.disruptions_allowed) == (
        2,
        2,
        0,
    )
    create_running(core, pod("web-2", labels={"app": "web"}))
    core.create_namespaced_pod_eviction("web-0", "default", eviction)
    assert sorted(p.metadata.name for p in core.list_namespaced_pod("default").items) == ["web-1", "web-2"]
    assert policy.read_namespaced_pod_disruption_budget("web", "default").status.disruptions_allowed == 0


def test_cluster_scoped_nodes_events_and_finalizers(core: client.CoreV1Api, emulator: EmulatorThread) -> None:
    core.create_node({"metadata": {"name": "node-a", "labels": {"kubernetes.io/arch": "amd64"}}})
    core.patch_node("node-a", {"spec": {"unschedulable": True}})
    assert core.read_node("node-a").spec.unschedulable is True
    assert [n.metadata.name for n in core.list_node(label_selector="kubernetes.io/arch=amd64").items] == [
        "node-a"
    ]
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e1"},
            "reason": "MigrationFinished",
            "involvedObject": {"kind": "Migration", "name": "m"},
        },
    )
    events = client.EventsV1Api(api_client(emulator.url))
    events.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e2"},
            "reason": "PreDumpSkipped",
            "eventTime": "2026-11-23T00:00:00.000000Z",
            "reportingController": "clm",
            "reportingInstance": "x",
            "action": "Migrate",
            "type": "Normal",
        },
    )
    assert [e.reason for e in core.list_namespaced_event("default").items] == ["MigrationFinished"]
    assert [e.reason for e in events.list_namespaced_event("default").items] == ["PreDumpSkipped"]
    held = pod("held")
    held["metadata"]["finalizers"] = ["clm.test/hold"]
    core.create_namespaced_pod("default", held)
    core.delete_namespaced_pod("held", "default")
    assert core.read_namespaced_pod("held", "default").metadata.deletion_timestamp is not None
    core.patch_namespaced_pod("held", "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException):
        core.read_namespaced_pod("held", "default")


def test_apps_workloads_track_generation(emulator: EmulatorThread) -> None:
    apps = client.AppsV1Api(api_client(emulator.url))
    dep = apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
    )
    assert dep.metadata.generation == 1
    assert (
        apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}}).metadata.generation == 2
    )
    labelled = apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 2  # metadata changes do not bump it


def test_state_persists_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with running_emulator(state_file=state) as emu:
        core = client.CoreV1Api(api_client(emu.url))
        core.create_namespaced_pod("default", pod("keep"))
        install_crd(emu).create_namespaced_custom_object(
            "live.cast.ai",
            "v1",
            "default",
            "migrations",
            {
                "apiVersion": "live.cast.ai/v1",
                "kind": "Migration",
                "metadata": {"name": "m"},
                "spec": {"podName": "keep"},
            },
        )
        rv = int(core.list_namespaced_pod("default").metadata.resource_version)
    with running_emulator(state_file=state) as emu:
        core = client.CoreV1Api(api_client(emu.url))
        assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["keep"]
        custom = client.CustomObjectsApi(api_client(emu.url))
        assert custom.get_namespaced_custom_object("live.cast.ai", "v1", "default", "migrations", "m")
        assert int(core.create_namespaced_pod("default", pod("after")).metadata.resource_version) > rv


def test_discovery(emulator: EmulatorThread) -> None:
    install_crd(emulator)
    groups = {g.name for g in client.ApisApi(api_client(emulator.url)).get_api_versions().groups}
    assert {"apps", "batch", "policy", "events.k8s.io", "apiextensions.k8s.io", "live.cast.ai"} <= groups
    resources = client.CoreV1Api(api_client(emulator.url)).get_api_resources().resources
    names = {r.name for r in resources}
    assert {
        "pods",
        "pods/status",
        "pods/eviction",
        "nodes",
        "events",
        "namespaces",
        "persistentvolumeclaims",
        "persistentvolumes",
    } <= names
    assert client.VersionApi(api_client(emulator.url)).get_code().minor == "30"
