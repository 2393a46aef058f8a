"""Every kustomization renders with `kubectl kustomize`, validates against the Kubernetes 1.30
OpenAPI schemas (strict: unknown fields are errors), and holds what the deployment promises:
each service's settings load from exactly what its pod would get, least-privilege RBAC, host
access only for the node agents, probes, requests and PDBs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clm.runtime.settings import ServiceSettings, load_settings
from services.checkpoint_agent.app import CheckpointAgentSettings
from services.checkpoint_agent.certs import make_agent_cert, make_ca, write_agent_tls
from services.coordinator.app import CoordinatorSettings
from services.evictor_planner.app import PlannerSettings
from services.ip_handover_agent.app import IpHandoverSettings
from services.labeler.app import LabelerSettings

ROOT = Path(__file__).resolve().parent
K8S_VERSION = "1.30.0"
COMPONENTS = sorted(p.name for p in (ROOT / "components").iterdir() if (p / "kustomization.yaml").is_file())
OVERLAYS = sorted(p.name for p in (ROOT / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SETTINGS: dict[str, type[ServiceSettings]] = {
    "labeler": LabelerSettings,
    "evictor-planner": PlannerSettings,
    "coordinator": CoordinatorSettings,
    "checkpoint-agent": CheckpointAgentSettings,
    "ip-handover-agent": IpHandoverSettings,
}
AGENTS = {"checkpoint-agent", "ip-handover-agent"}
# What the downward API would give a pod, for loading settings as the pod would.
FIELD_VALUES = {"spec.nodeName": "ip-10-0-1-17", "status.hostIP": "10.0.1.17", "metadata.name": "pod-0"}


Obj = dict[str, Any]


def kustomize(directory: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize built in) is needed to render deploy/kustomize; install it"
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """Every rendering a user can make: base, base plus each component, each overlay."""
    out = {"base": kustomize(ROOT / "base")}
    for component in COMPONENTS:
        directory = tmp_path_factory.mktemp(component)
        # kustomize accepts only relative paths to other kustomizations.
        rel = os.path.relpath(ROOT, directory)
        (directory / "kustomization.yaml").write_text(
            yaml.safe_dump({"resources": [f"{rel}/base"], "components": [f"{rel}/components/{component}"]})
        )
        out[f"components/{component}"] = kustomize(directory)
    for overlay in OVERLAYS:
        out[f"overlays/{overlay}"] = kustomize(ROOT / "overlays" / overlay)
    return out


RENDERINGS = ["base", *(f"components/{c}" for c in COMPONENTS), *(f"overlays/{o}" for o in OVERLAYS)]


def find(docs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Obj], kind: str, name: str) -> Obj:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[Obj]) -> dict[str, Obj]:
    """CLM's five services by component label."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet")
    }


def pod_env(docs: list[Obj], workload: Obj) -> dict[str, str]:
    """The environment the workload's container starts with (ConfigMaps, then env)."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = "from-the-secret"
        else:
            env[var["name"]] = FIELD_VALUES[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def stand_in_secret_files(workload: Obj, env: dict[str, str], tmp_path: Path) -> None:
    """Settings naming files of a mounted Secret point at stand-ins (the pod would have the
    Secret's files there); each must lie under one of the container's Secret mounts."""
    spec = workload["spec"]["template"]["spec"]
    secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    mounts = [
        m["mountPath"] for m in spec["containers"][0].get("volumeMounts", []) if m["name"] in secret_volumes
    ]
    for key, value in env.items():
        if not any(value == m or value.startswith(m + "/") for m in mounts):
            continue
        tmp_path.mkdir(parents=True, exist_ok=True)
        stand_in = tmp_path / key.lower()
        if key == "CLM_AGENT_TLS_DIR":  # a directory of the agent's TLS files
            ca = make_ca()
            write_agent_tls(stand_in, ca, make_agent_cert(ca))
        else:
            stand_in.write_text("stand-in")
        env[key] = str(stand_in)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("CLM_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


# The fields of prometheus-operator's PrometheusRule (monitoring.coreos.com/v1), which the
# Kubernetes schemas do not hold; promtool checks the rules themselves
# (tests/integration/test_monitoring.py).
RULE_GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_prometheus_rule(doc: Obj) -> None:
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, sorted(doc)
    assert set(doc["spec"]) == {"groups"}, sorted(doc["spec"])
    for group in doc["spec"]["groups"]:
        assert set(group) <= RULE_GROUP_FIELDS and group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert set(rule) <= RULE_FIELDS and rule["expr"], rule
            assert ("alert" in rule) != ("record" in rule), rule
            assert all(
                isinstance(v, str) for v in {**rule.get("labels", {}), **rule.get("annotations", {})}.values()
            )


FOREIGN_KINDS = {("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule}


@pytest.mark.parametrize("name", RENDERINGS)
def test_renders_and_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    docs = rendered[name]
    assert docs, f"{name} renders nothing"
    for doc in docs:
        if (check := FOREIGN_KINDS.get((doc["apiVersion"], doc["kind"]))) is not None:
            check(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise AssertionError(
                f"{name}: {doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}"
            ) from None


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_service_loads_its_settings_from_what_its_pod_gets(
    rendered: dict[str, list[Obj]], name: str, tmp_path: Path
) -> None:
    docs = rendered[name]
    services = workloads(docs)
    assert set(services) == set(SETTINGS), f"{name}: services rendered: {sorted(services)}"
    for component, workload in services.items():
        cls = SETTINGS[component]
        env = pod_env(docs, workload)
        unknown = sorted(k for k in env if k.startswith("CLM_") and k[4:].lower() not in cls.model_fields)
        assert not unknown, f"{name}: {component} is given settings it does not have: {unknown}"
        before = dict(env)
        stand_in_secret_files(workload, env, tmp_path / component)
        for key in ("CLM_AGENT_TLS_DIR", "CLM_NATS_TLS_CA_FILE"):
            # Files the pod reads come from a mounted Secret.
            assert (
                env.get(key) != before.get(key) or key not in env
            ), f"{name}: {component}'s {key} is in no Secret mount"
        with environment(env):
            settings = load_settings(cls)
        port = settings.http_port
        container = workload["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (
            ports["http"] == port
        ), f"{name}: {component} serves HTTP on {port}, its pod says {ports['http']}"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_node_agents_alone_reach_into_the_host(rendered: dict[str, list[Obj]]) -> None:
    for name in RENDERINGS:
        for component, workload in workloads(rendered[name]).items():
            spec = workload["spec"]["template"]["spec"]
            container = spec["containers"][0]
            privileged = container.get("securityContext", {}).get("privileged", False)
            if component in AGENTS:
                assert workload["kind"] == "DaemonSet" and spec["hostNetwork"] and privileged
                assert spec.get("hostPID", False) == (component == "checkpoint-agent"), component
                assert {"operator": "Exists"} in spec["tolerations"]
            else:
                assert workload["kind"] == "Deployment"
                assert not (privileged or spec.get("hostNetwork") or spec.get("hostPID")), component
                assert spec["securityContext"]["runAsNonRoot"] is True
                assert container["securityContext"] == {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                }
                assert all("hostPath" not in v for v in spec.get("volumes", []))


def test_the_checkpoint_agent_gives_criu_a_tmpfs_run(rendered: dict[str, list[Obj]]) -> None:
    # CRIU caches its kernel facts only on a tmpfs /run (services/checkpoint_agent/criu_cache.py).
    for name in RENDERINGS:
        spec = workloads(rendered[name])["checkpoint-agent"]["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volume = next(v for v in spec["volumes"] if v["name"] == mounts["/run"])
        assert volume["emptyDir"]["medium"] == "Memory", name


def rules_of(docs: list[Obj], role: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in one(docs, "ClusterRole", role)["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


READ = {"list", "watch"}
WORKLOAD_READS = {
    *((g, r, v) for g, r in [("", "persistentvolumeclaims"), ("", "persistentvolumes")] for v in READ),
    *(
        (g, r, v)
        for g, r in [("apps", "replicasets"), ("apps", "deployments"), ("apps", "statefulsets")]
        for v in READ
    ),
    *((g, r, v) for g, r in [("batch", "jobs"), ("batch", "cronjobs")] for v in READ),
}
# Exactly the calls each service makes (services/*/app.py, services/coordinator/kube.py).
EXPECTED_RULES = {
    "clm-labeler": {
        *WORKLOAD_READS,
        *(("", r, v) for r in ("pods", "nodes") for v in ("get", "list", "watch", "patch")),
    },
    "clm-evictor-planner": {
        *WORKLOAD_READS,
        ("", "pods", "list"),
        ("", "pods", "watch"),
        *(("", "nodes", v) for v in ("list", "watch", "patch")),
        ("", "pods/eviction", "create"),
        ("policy", "poddisruptionbudgets", "list"),
        ("policy", "poddisruptionbudgets", "watch"),
        *(("live.cast.ai", "migrations", v) for v in ("list", "watch", "create")),
    },
    "clm-coordinator": {
        *(("live.cast.ai", "migrations", v) for v in ("get", "list", "watch", "create", "patch")),
        ("live.cast.ai", "migrations/status", "get"),
        ("live.cast.ai", "migrations/status", "patch"),
        *(("", "pods", v) for v in ("get", "list", "create", "delete")),
        ("", "pods/status", "patch"),
        ("", "pods/eviction", "create"),
        ("", "nodes", "list"),
        ("", "events", "create"),
    },
    # The node's clm-cni, which the agent serves: which pod a clone restores, and its IP.
    "clm-ip-handover-agent": {("", "pods", "get")},
}


def test_rbac_grants_each_service_exactly_its_calls(rendered: dict[str, list[Obj]]) -> None:
    base = rendered["base"]
    for role, expected in EXPECTED_RULES.items():
        assert rules_of(base, role) == expected, role
    assert {d["metadata"]["name"] for d in find(base, "ClusterRole")} == set(EXPECTED_RULES)
    assert not find(base, "Role"), "no namespaced roles are expected"
    deleting = rendered["components/delete-drained-nodes"]
    assert rules_of(deleting, "clm-evictor-planner") == EXPECTED_RULES["clm-evictor-planner"] | {
        ("", "nodes", "delete")
    }


@pytest.mark.parametrize("name", RENDERINGS)
def test_each_service_has_its_own_account_bound_where_it_runs(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    docs = rendered[name]
    for component, workload in workloads(docs).items():
        spec = workload["spec"]["template"]["spec"]
        account = one(docs, "ServiceAccount", spec["serviceAccountName"])
        assert account["metadata"]["name"] == f"clm-{component}"
        namespace = workload["metadata"]["namespace"]
        assert account["metadata"]["namespace"] == namespace
        if component == "checkpoint-agent":
            assert spec["automountServiceAccountToken"] is False, f"{component} never calls the API"
        if component == "ip-handover-agent":  # clm-cni's pod reads, and nothing else (above)
            assert spec["automountServiceAccountToken"] is True
        for binding in find(docs, "ClusterRoleBinding", f"clm-{component}"):
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": f"clm-{component}", "namespace": namespace}
            ]


@pytest.mark.parametrize("name", RENDERINGS)
def test_pods_request_resources_and_deployments_have_budgets(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    docs = rendered[name]
    pod_specs = {
        d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    }
    budgets = find(docs, "PodDisruptionBudget")
    for workload_name, workload in pod_specs.items():
        template = workload["spec"]["template"]
        for container in template["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(
                container["resources"]["requests"]
            ), f"{workload_name}/{container['name']}"
        labels = template["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if workload["kind"] != "DaemonSet":
            covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            assert len(covering) == 1, f"{name}: {workload_name} has {len(covering)} PodDisruptionBudgets"
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        assert any(
            selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in pod_specs.values()
        ), f"{name}: Service {service['metadata']['name']} selects no pods"


def nats_routes(docs: list[Obj]) -> list[str]:
    conf = one(docs, "ConfigMap", "clm-nats-config")["data"]["nats.conf"]
    return re.findall(r"nats://(clm-nats-\d+)\.clm-nats-headless:6222", conf)


def test_nats_is_a_three_server_jetstream_cluster_in_base(rendered: dict[str, list[Obj]]) -> None:
    base = rendered["base"]
    nats = one(base, "StatefulSet", "clm-nats")
    assert nats["spec"]["replicas"] == 3
    assert nats_routes(base) == [f"clm-nats-{i}" for i in range(3)]
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert one(base, "ConfigMap", "clm-common")["data"]["CLM_STREAM_REPLICAS"] == "3"
    assert one(base, "Service", "clm-nats-headless")["spec"]["publishNotReadyAddresses"] is True


def test_dev_runs_one_nats_server_without_peers(rendered: dict[str, list[Obj]]) -> None:
    dev = rendered["overlays/dev"]
    assert one(dev, "StatefulSet", "clm-nats")["spec"]["replicas"] == 1
    conf = one(dev, "ConfigMap", "clm-nats-config")["data"]["nats.conf"]
    assert nats_routes(dev) == [] and not re.search(r"^\s*cluster\s*\{", conf, re.MULTILINE)
    assert one(dev, "ConfigMap", "clm-common")["data"]["CLM_STREAM_REPLICAS"] == "1"
    assert one(dev, "Secret", "clm-agent-tls")["type"] == "kubernetes.io/tls"
    images = {
        w["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] for w in workloads(dev).values()
    }
    assert images == {"Never"}


def test_external_nats_removes_the_bundled_cluster(rendered: dict[str, list[Obj]]) -> None:
    docs = rendered["components/external-nats"]
    assert not [d for d in docs if d["metadata"]["name"].startswith("clm-nats")]
    assert "clm-nats" not in one(docs, "ConfigMap", "clm-common")["data"]["CLM_NATS_URL"]


def test_aws_eks_moves_ips_on_the_vpc_and_pulls_from_ecr(rendered: dict[str, list[Obj]]) -> None:
    docs = rendered["overlays/aws-eks"]
    assert one(docs, "ConfigMap", "clm-ip-handover-agent")["data"]["CLM_NETWORK_BACKEND"] == "aws-vpc"
    for service in ("clm-coordinator", "clm-evictor-planner"):
        assert one(docs, "ConfigMap", service)["data"]["CLM_COMPATIBILITY_PROFILE"] == "eks"
    account = one(docs, "ServiceAccount", "clm-ip-handover-agent")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    images = [w["spec"]["template"]["spec"]["containers"][0]["image"] for w in workloads(docs).values()]
    assert all(
        re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/clm/[a-z-]+:0\.1\.0", i) for i in images
    ), images


def test_component_settings_take_effect(rendered: dict[str, list[Obj]]) -> None:
    assert (
        one(rendered["components/aggressive"], "ConfigMap", "clm-evictor-planner")["data"]["CLM_MODE"]
        == "aggressive"
    )
    for workload in workloads(rendered["components/prometheus"]).values():
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        port = workload["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }


def test_monitoring_ships_the_alerts_and_a_dashboard_grafana_loads(rendered: dict[str, list[Obj]]) -> None:
    docs = rendered["components/monitoring"]
    rule = one(docs, "PrometheusRule", "clm-alerts")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"CLMMigrationsFailing", "CLMMigrationStuck", "CLMFreezeOverBudget"} <= alerts
    dashboard = one(docs, "ConfigMap", "clm-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == rule["metadata"]["namespace"] == "castai-agent"
    board = yaml.safe_load(dashboard["data"]["clm-migrations.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs and all(e.count("(") == e.count(")") for e in exprs)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_the_crd_is_rendered_as_written(rendered: dict[str, list[Obj]]) -> None:
    written = yaml.safe_load((ROOT / "base/crds/migrations.live.cast.ai.yaml").read_text())
    crd = one(rendered["base"], "CustomResourceDefinition", "migrations.live.cast.ai")
    crd["metadata"].pop("labels")
    written["metadata"].pop("labels", None)
    assert crd == written
