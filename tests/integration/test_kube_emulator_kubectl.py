"""The Kubernetes API emulator, driven through kubectl with a kubeconfig pointed at it."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import wait_for
from tools.kube_emulator.testing import running_emulator

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed (it ships with these machines' image; on another "
    "machine install kubectl to run the kubectl half of the emulator tests)",
)


class Kubectl:
    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.cache = cache

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [KUBECTL or "kubectl", f"--cache-dir={self.cache}", *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [KUBECTL or "kubectl", f"--cache-dir={self.cache}", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    kubeconfig = tmp_path / "kubeconfig"
    with running_emulator(kubeconfig=kubeconfig, bookmark_seconds=0.5):
        yield Kubectl(kubeconfig, tmp_path / "cache")


MIGRATION = """
apiVersion: live.cast.ai/v1
kind: Migration
metadata: {{name: {name}, namespace: games}}
spec: {{podName: minecraft-0, sourceNode: node-a, destinationNode: node-b{extra}}}
"""


def test_crud_selectors_and_apply(kubectl: Kubectl) -> None:
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: web}}\n"
        "spec: {nodeName: node-a, containers: [{name: app, image: nginx}]}\n"
    )
    assert "pod/web-0 created" in kubectl("apply", "-f", "-", stdin=pod).stdout
    assert "pod/web-0 unchanged" in kubectl("apply", "-f", "-", stdin=pod).stdout
    kubectl("label", "pod", "web-0", "tier=front")
    kubectl("annotate", "pod", "web-0", "note=hello")
    out = kubectl(
        "get", "pods", "-l", "tier=front", "--field-selector", "spec.nodeName=node-a", "-o", "name"
    ).stdout
    assert out.strip() == "pod/web-0"
    assert kubectl("get", "pods", "--field-selector", "spec.nodeName=node-b", "-o", "name").stdout == ""
    table = kubectl("get", "pods", "-o", "wide").stdout.splitlines()
    assert table[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert table[1].split()[0] == "web-0" and "node-a" in table[1]
    kubectl(
        "patch",
        "pod",
        "web-0",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/metadata/labels/app","value":"api"}]',
    )
    assert kubectl("get", "pod", "web-0", "-o", "jsonpath={.metadata.labels.app}").stdout == "api"
    logs = kubectl("logs", "web-0", check=False)  # no kubelet serves node-a here
    assert logs.returncode != 0 and "pods/log is not served for default/web-0" in logs.stderr, logs.stderr
    shell = kubectl("exec", "web-0", "--", "sh", check=False)
    assert shell.returncode != 0 and "pods/exec is not served" in shell.stderr, shell.stderr
    kubectl("delete", "pod", "web-0")
    assert "NotFound" in kubectl("get", "pod", "web-0", check=False).stderr


def test_migrations_crd_printer_columns_validation_and_events(kubectl: Kubectl) -> None:
    kubectl("apply", "-k", "deploy/kustomize/base/crds")
    kubectl("create", "namespace", "games")
    kubectl("apply", "-f", "-", stdin=MIGRATION.format(name="mc-move", extra=""))
    kubectl(
        "patch",
        "migration",
        "mc-move",
        "-n",
        "games",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Finished","freezeDuration":"412ms",'
        '"progress":{"percent":100,"step":"dump","etaSeconds":0}}}',
    )
    lines = kubectl("get", "migrations", "-A").stdout.splitlines()
    header = ["NAMESPACE", "NAME", "POD", "SOURCE", "DESTINATION", "PHASE", "PROGRESS", "FREEZE", "AGE"]
    assert lines[0].split() == header
    assert lines[1].split()[:8] == [
        "games",
        "mc-move",
        "minecraft-0",
        "node-a",
        "node-b",
        "Finished",
        "100",
        "412ms",
    ]
    wide = kubectl("get", "mig", "-n", "games", "-o", "wide").stdout.splitlines()[0].split()
    assert "STRATEGY" in wide and "CLONE" in wide and "STEP" in wide and "ETA" in wide

    bad = kubectl(
        "apply", "-f", "-", stdin=MIGRATION.format(name="bad", extra=", strategy: teleport"), check=False
    )
    assert bad.returncode != 0
    assert 'spec.strategy: Unsupported value: "teleport"' in bad.stderr
    unknown = kubectl(
        "apply", "-f", "-", stdin=MIGRATION.format(name="odd", extra=", colour: red"), check=False
    )
    assert 'unknown field "spec.colour"' in unknown.stderr

    uid = kubectl("get", "migration", "mc-move", "-n", "games", "-o", "jsonpath={.metadata.uid}").stdout
    for i, reason in enumerate(("PreDumpSkipped", "PodCreateFinished", "MigrationFinished")):
        kubectl(
            "create",
            "-f",
            "-",
            stdin=f"""
apiVersion: v1
kind: Event
metadata: {{name: mc-move.{i}, namespace: games}}
involvedObject: {{apiVersion: live.cast.ai/v1, kind: Migration, name: mc-move, namespace: games, uid: {uid}}}
reason: {reason}
message: step {i}
type: Normal
source: {{component: clm-coordinator}}
""",
        )
    described = kubectl("describe", "migration", "mc-move", "-n", "games").stdout
    events = described.split("Events:", 1)[1]
    assert [r for r in ("PreDumpSkipped", "PodCreateFinished", "MigrationFinished") if r in events] == [
        "PreDumpSkipped",
        "PodCreateFinished",
        "MigrationFinished",
    ]


def test_get_migrations_watch_prints_changes(kubectl: Kubectl) -> None:
    kubectl("apply", "-k", "deploy/kustomize/base/crds")
    kubectl("create", "namespace", "games")
    kubectl("apply", "-f", "-", stdin=MIGRATION.format(name="w", extra=""))
    watcher = kubectl.popen("get", "migrations", "-A", "-w")
    lines: queue.Queue[str] = queue.Queue()
    assert watcher.stdout is not None

    def read() -> None:
        for line in watcher.stdout or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def phase_rows() -> list[str]:
        return [line.split()[5] for line in list(lines.queue)[1:] if len(line.split()) > 6]

    try:
        # The table's header and the Migration as it is: the watch is on.
        wait_for(lambda: lines.qsize() >= 2, "kubectl's first rows")
        for phase in ("Dumping", "Restoring", "Finished"):
            kubectl(
                "patch",
                "migration",
                "w",
                "-n",
                "games",
                "--subresource=status",
                "--type=merge",
                "-p",
                f'{{"status":{{"phase":"{phase}"}}}}',
            )
        wait_for(lambda: len(phase_rows()) >= 3, "a row per change")
    finally:
        watcher.terminate()
    watcher.wait(timeout=10)
    phases = phase_rows()
    assert phases == ["Dumping", "Restoring", "Finished"], list(lines.queue)


def test_cluster_scoped_and_eviction_via_kubectl(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin="apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n")
    kubectl("cordon", "node-a")
    assert kubectl("get", "node", "node-a", "-o", "jsonpath={.spec.unschedulable}").stdout == "true"
    assert "SchedulingDisabled" in kubectl("get", "nodes").stdout
    kubectl("uncordon", "node-a")
    assert kubectl("get", "node", "node-a", "-o", "jsonpath={.spec.unschedulable}").stdout in ("", "false")
