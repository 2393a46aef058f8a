from __future__ import annotations

import tomllib
from pathlib import Path

from tests.kit.containerd_node import RESTORE_HANDLER, containerd_config


def test_the_config_is_containerd_2s_version_3_with_clms_handler() -> None:
    text = containerd_config(
        root=Path("/n/root"),
        state=Path("/n/state"),
        socket=Path("/n/containerd.sock"),
        runc_root=Path("/n/runc"),
        cni_bin=Path("/n/cni-bin"),
        cni_conf=Path("/n/cni-conf"),
        restore_binary=Path("/opt/clm/bin/clm-runc"),
    )
    config = tomllib.loads(text)
    assert config["version"] == 3
    assert config["grpc"]["address"] == "/n/containerd.sock"
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    runtimes = runtime["containerd"]["runtimes"]
    assert runtimes["runc"]["options"] == {"BinaryName": "runc", "Root": "/n/runc"}
    handler = runtimes[RESTORE_HANDLER]
    assert handler["options"]["BinaryName"] == "/opt/clm/bin/clm-runc"
    assert handler["options"]["Root"] == "/n/runc"  # the same runc state: the agent sees both
    assert handler["pod_annotations"] == ["cast.ai/restore"]
    assert runtime["cni"]["conf_dir"] == "/n/cni-conf"
