from __future__ import annotations

from pathlib import Path
from typing import Any

from clm.runtime.cri import api_pb2 as api
from tests.kit.kubelet import container_config, sandbox_config

POD: dict[str, Any] = {
    "metadata": {
        "namespace": "games",
        "name": "mc-0",
        "uid": "u-1",
        "labels": {"app": "mc"},
        "annotations": {"cast.ai/restore": "games/mc-src"},
    },
    "spec": {
        "containers": [
            {
                "name": "server",
                "image": "localhost/clm-pod:bookworm",
                "command": ["python3.11"],
                "args": ["-u", "/srv/s.py"],
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "app", "mountPath": "/srv"},
                ],
            }
        ],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "app", "hostPath": {"path": "/opt/app"}}],
    },
}


def test_the_sandbox_carries_what_kubelet_puts_there() -> None:
    config = sandbox_config(POD, kubelet_dir=Path("/k"), cgroup_root="/kubepods")
    assert (config.metadata.namespace, config.metadata.name, config.metadata.uid) == ("games", "mc-0", "u-1")
    assert config.labels["io.kubernetes.pod.uid"] == "u-1" and config.labels["app"] == "mc"
    assert config.annotations["cast.ai/restore"] == "games/mc-src"
    assert config.linux.cgroup_parent == "/kubepods/podu-1"
    assert config.linux.security_context.namespace_options.pid == api.CONTAINER


def test_a_container_gets_its_command_env_mounts_and_log_path() -> None:
    config = container_config(POD, POD["spec"]["containers"][0], kubelet_dir=Path("/k"))
    assert list(config.command) == ["python3.11"] and list(config.args) == ["-u", "/srv/s.py"]
    assert [(e.key, e.value) for e in config.envs] == [("A", b"1")]
    assert [(m.container_path, m.host_path) for m in config.mounts] == [
        ("/data", "/k/pods/u-1/volumes/kubernetes.io~empty-dir/data"),
        ("/srv", "/opt/app"),
    ]
    assert config.log_path == "server/0.log"
    assert config.labels["io.kubernetes.container.name"] == "server"
