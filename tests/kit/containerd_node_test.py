from __future__ import annotations

import tomllib
from pathlib import Path

from tests.kit.containerd_node import RESTORE_HANDLER, containerd_config


def test_the_config_is_containerd_2s_version_3_importing_drop_ins() -> None:
    text = containerd_config(
        root=Path("/n/root"),
        state=Path("/n/state"),
        socket=Path("/n/containerd.sock"),
        runc_root=Path("/n/runc"),
        cni_bin=Path("/n/cni-bin"),
        cni_conf=Path("/n/cni-conf"),
        imports=["/n/conf.d/*.toml"],
    )
    config = tomllib.loads(text)
    assert config["version"] == 3
    assert config["grpc"]["address"] == "/n/containerd.sock"
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    runtimes = runtime["containerd"]["runtimes"]
    assert runtimes["runc"]["options"] == {"BinaryName": "runc", "Root": "/n/runc"}
    assert RESTORE_HANDLER not in runtimes  # it comes in install-node's drop-in
    assert config["imports"] == ["/n/conf.d/*.toml"]
    assert runtime["cni"]["conf_dir"] == "/n/cni-conf"
