"""The sandbox end to end, as a user drives it: `clm sandbox up` (the README's main job,
with the demo), every service a real process, three nodes as network namespaces with real
runc containers and CRIU, the API emulator, NATS.

- the demo: the game server is moved node to node (a StatefulSet pod: its name kept) while
  the player holds one connection: every move finishes, the connection survives, the
  server's state is exactly the replayed one; afterwards nothing of the sandbox is left;
- in the background: a user's own pod (the host's programs) runs on the node it is bound
  to, is labeled eligible, `clm migrate` moves it (a `-clone-1` pod on the new node, same
  IP), `clm events` shows the documented sequence, `clm sandbox status` answers, and
  `clm sandbox down` removes everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client

from tests.integration.support import one_sandbox_at_a_time, pex_dir, wait_for
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.netns import ip
from tools.clm import main as clm
from tools.kube_emulator.testing import api_client
from tools.sandbox.kubelet_node import NFS_ROOT
from tools.sandbox.sandbox import missing_requirements, read_state

MISSING = missing_requirements()  # root, runc, CRIU, containerd 2.1, ...
pytestmark = [
    # A turn may come after the other sandbox tests' (one sandbox per machine): the wait counts.
    pytest.mark.timeout(1200),
    pytest.mark.skipif(bool(MISSING), reason=f"{'; '.join(MISSING)}: run tools/setup/install-system-deps"),
]


@pytest.fixture(autouse=True)
def _take_turns() -> Iterator[None]:
    with one_sandbox_at_a_time():
        yield


COUNTER = "import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.1)"


def _counts(log: str) -> list[int]:
    return [int(line) for line in log.splitlines() if line.strip()]


def _log(core: client.CoreV1Api, pod: str) -> str:
    # Unpreloaded: the client turns a text body it cannot parse as JSON into "b'...'".
    return core.read_namespaced_pod_log(pod, "default", _preload_content=False).data.decode()


def _pexes() -> Path:
    built = pex_dir()
    if built is None:
        pytest.skip("the sandbox runs the service PEXes: run under `pants test` or set CLM_PEX_DIR=dist")
    return built


def _leftovers() -> list[str]:
    names = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith("clm-sbx")]


def test_the_demo_moves_the_game_server_while_the_player_stays_connected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = clm.main(
        [
            "sandbox", "up", "--foreground", "--demo", "--auto-move", "1", "--moves", "3",
            "--state-dir", str(tmp_path / "sbx"), "--pex-dir", str(_pexes()), "--nats-port", "0",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out[-4000:] + captured.err[-4000:]
    assert "the labeler marked it live.cast.ai/migration-enabled=true" in out
    for move, (src, dst) in enumerate((("sbx-1", "sbx-2"), ("sbx-2", "sbx-3"), ("sbx-3", "sbx-1")), start=1):
        assert f"game-0-move-{move}: {src} -> {dst}" in out
        for reason in ("PreDumpSkipped", "PodCreateFinished", "MigrationFinished"):
            assert f"demo/game-0-move-{move}  {reason}" in out
        assert f"moved to {dst} as game-0;" in out  # a StatefulSet pod keeps its name
    summary = out[out.index("Demo summary") :].splitlines()[3].split()
    moves, finished, _freeze, _gap, _answers, dropped, verified = summary
    assert (moves, finished, dropped, verified) == ("3", "3", "0", "yes"), out[-2000:]
    assert "sandbox stopped" in out
    assert _leftovers() == []


def test_a_users_pod_in_the_background_sandbox_moves_with_clm_migrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "sbx"
    monkeypatch.setattr(clm, "SANDBOX_STATE", state_dir)  # the commands find this sandbox
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("CLM_NATS_URL", raising=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    up = subprocess.run(
        [sys.executable, "-m", "tools.clm.main", "sandbox", "up", "--state-dir", str(state_dir),
         "--pex-dir", str(_pexes()), "--nats-port", "0"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "sandbox running" in up.stdout
        state = read_state(state_dir)
        assert state is not None
        api = api_client(state["kube_url"])
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "counter"},
                "spec": {
                    "nodeName": "sbx-2",
                    "containers": [
                        {
                            "name": "main",
                            "image": POD_IMAGE,
                            "command": ["python3.11", "-u", "-c", COUNTER],
                        }
                    ],
                },
            },
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pod = core.read_namespaced_pod("counter", "default")
            labeled = (pod.metadata.labels or {}).get("live.cast.ai/migration-enabled") == "true"
            if labeled and pod.status.pod_ip:
                break
            time.sleep(0.3)
        assert pod.status.phase == "Running" and pod.status.pod_ip, pod.status
        capsys.readouterr()

        _exits_follow_the_restart_policy(core)

        # Its output, as `kubectl logs` reads it (the API proxies to the node's runtime).
        counted = wait_for(lambda: _counts(_log(core, "counter")), "the counter's first lines in its log")
        assert counted and counted == list(range(counted[0], counted[0] + len(counted))), counted[-5:]

        assert clm.main(["migrate", "default/counter", "--to", "sbx-9"]) == 1
        assert "no node sbx-9 (nodes: sbx-1, sbx-2, sbx-3)" in capsys.readouterr().err
        assert clm.main(["migrate", "default/counter", "--to", "sbx-3", "--timeout", "120"]) == 0
        assert "done: counter runs on sbx-3 as counter-clone-1" in capsys.readouterr().out
        clone = core.read_namespaced_pod("counter-clone-1", "default")
        assert clone.spec.node_name == "sbx-3" and clone.status.pod_ip == pod.status.pod_ip
        _the_clone_logs_on(core, "counter-clone-1", counted[-1])

        assert clm.main(["events", "--json"]) == 0
        kinds = [orjson.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]
        assert kinds == ["PreDumpSkipped", "PodCreateFinished", "MigrationFinished"]

        assert clm.main(["sandbox", "status", "--state-dir", str(state_dir)]) == 0
        status = capsys.readouterr().out
        assert "default/counter-clone-1" in status and "Finished" in status

        _volumes_follow_the_pod(core, capsys)

        _a_second_sandbox_is_refused(tmp_path, state_dir, int(state["pid"]), capsys)
        assert core.read_namespaced_pod("counter-clone-1", "default").status.phase == "Running"
    finally:
        down = clm.main(["sandbox", "down", "--state-dir", str(state_dir)])
    assert down == 0
    assert "sandbox stopped" in capsys.readouterr().out
    assert read_state(state_dir) is None and _leftovers() == []
    assert clm.main(["sandbox", "status", "--state-dir", str(state_dir)]) == 1
    assert "no sandbox runs" in capsys.readouterr().err


NOTES = """
import itertools, os, time
msg = open("/cfg/msg").read().strip()
out = open("/data/notes.txt", "a", buffering=1)  # held open across the move
for i in itertools.count():
    out.write(f"{i}\\n")
    with open(f"/scratch/{i % 5}", "w") as f:
        f.write(str(i))
    print(msg, i, flush=True)
    time.sleep(0.1)
"""


def _volumes_follow_the_pod(core: client.CoreV1Api, capsys: pytest.CaptureFixture[str]) -> None:
    """A configMap, a ReadWriteMany claim (an nfs PV: the sandbox's stand-in NFS server) and an
    emptyDir: kubelet mounts the first two again for the clone, the emptyDir's files come along,
    and a file held open on the claim goes on being written after the move."""
    export = f"/notes-{os.getpid()}-{time.monotonic_ns()}"
    core.create_namespaced_config_map("default", {"metadata": {"name": "greeting"}, "data": {"msg": "hello"}})
    core.create_persistent_volume(
        {
            "metadata": {"name": "notes-pv"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "nfs": {"server": "sandbox", "path": export},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        "default",
        {
            "metadata": {"name": "notes"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "volumeName": "notes-pv",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "notes"},
            "spec": {
                "nodeName": "sbx-1",
                "containers": [
                    {
                        "name": "main",
                        "image": POD_IMAGE,
                        "command": ["python3.11", "-u", "-c", NOTES],
                        "volumeMounts": [
                            {"name": "cfg", "mountPath": "/cfg"},
                            {"name": "data", "mountPath": "/data"},
                            {"name": "scratch", "mountPath": "/scratch"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "greeting"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "notes"}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            },
        },
    )

    def labeled() -> bool:
        pod = core.read_namespaced_pod("notes", "default")
        return (pod.metadata.labels or {}).get("live.cast.ai/migration-enabled") == "true"

    wait_for(labeled, "the notes pod labeled eligible (its claim is ReadWriteMany)", timeout=60)
    before = wait_for(lambda: _greetings(_log(core, "notes")), "the notes pod's first lines")
    capsys.readouterr()
    assert clm.main(["migrate", "default/notes", "--to", "sbx-2", "--timeout", "120"]) == 0
    assert "done: notes runs on sbx-2 as notes-clone-1" in capsys.readouterr().out
    after = wait_for(
        lambda: [n for n in _greetings(_log(core, "notes-clone-1")) if n > before[-1] + 5],
        "the clone's log going on, the configMap read",
    )
    notes = NFS_ROOT / "sandbox" / export.lstrip("/") / "notes.txt"
    written = [int(line) for line in notes.read_text().splitlines()]
    assert written == list(range(len(written))), written[-5:]  # one file, written on without a gap
    assert written[-1] >= after[0]
    core.delete_namespaced_pod("notes-clone-1", "default")
    shutil.rmtree(notes.parent)  # the stand-in NFS server keeps exports, as a real one does


def _greetings(log: str) -> list[int]:
    return [int(line.split()[1]) for line in log.splitlines() if line.startswith("hello ")]


def _a_second_sandbox_is_refused(
    tmp_path: Path, state_dir: Path, pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """One sandbox per machine: a second is refused, and `down` of another state directory
    leaves the running one alone (its namespaces would look like leftovers)."""
    other = str(tmp_path / "other")
    assert clm.main(["sandbox", "up", "--state-dir", other, "--pex-dir", str(_pexes())]) == 1
    err = capsys.readouterr().err
    assert f"another sandbox runs on this machine (pid {pid}, state dir {state_dir})" in err
    assert clm.main(["sandbox", "down", "--state-dir", other]) == 1
    assert f"runs from {state_dir}" in capsys.readouterr().err
    assert read_state(state_dir) is not None
    assert "clm-sbx-seg" in [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line]


def _the_clone_logs_on(core: client.CoreV1Api, clone: str, last_before: int) -> None:
    """The restored process writes on where it was, into its new node's log of the clone;
    `kubectl logs -f` follows it."""
    after = wait_for(lambda: _counts(_log(core, clone)), f"{clone}'s first lines in its new node's log")
    assert after[0] > last_before, (last_before, after[:3])
    assert after == list(range(after[0], after[0] + len(after))), after[:5]
    follow = core.read_namespaced_pod_log(clone, "default", follow=True, tail_lines=1, _preload_content=False)
    text = b""
    try:
        for chunk in follow.stream(16):  # the tail, then lines as they are written
            text += chunk
            if text.count(b"\n") >= 3:
                break
    finally:
        follow.release_conn()
    seen = _counts(text.decode())[:3]
    assert seen == list(range(seen[0], seen[0] + 3)) and seen[0] >= after[-1], seen


def _exits_follow_the_restart_policy(core: client.CoreV1Api) -> None:
    """A container that exits: restarted (Always, the default), or its pod finished with the
    exit code (Never), as kubelet does it."""
    for name, policy in (("once", "Never"), ("crashy", "Always")):
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": name},
                "spec": {
                    "nodeName": "sbx-1",
                    "restartPolicy": policy,
                    "containers": [
                        {
                            "name": "main",
                            "image": POD_IMAGE,
                            "command": ["python3.11", "-c", "print('bye'); import sys; sys.exit(3)"],
                        }
                    ],
                },
            },
        )

    def status(name: str) -> Any:
        return core.read_namespaced_pod(name, "default").status

    def restarts(name: str) -> int:
        statuses = status(name).container_statuses
        return (statuses[0].restart_count or 0) if statuses else 0

    wait_for(lambda: status("once").phase == "Failed", "the Never pod Failed", timeout=30)
    assert status("once").container_statuses[0].state.terminated.exit_code == 3
    wait_for(lambda: _log(core, "once") == "bye\n", "its output in its log (the relay may lag)")
    wait_for(lambda: restarts("crashy") >= 1, "the Always pod restarted", timeout=30)
    crashy = status("crashy")
    assert crashy.phase == "Running", crashy
    assert crashy.container_statuses[0].last_state.terminated.exit_code == 3
    for name in ("once", "crashy"):
        core.delete_namespaced_pod(name, "default")
