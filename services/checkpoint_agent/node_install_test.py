from __future__ import annotations

import tomllib
from pathlib import Path

from services.checkpoint_agent.node_install import dropin, install

V3 = """
version = 3
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = true
      BinaryName = "/usr/bin/runc"
"""
V2 = """
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"""


def test_the_dropin_runs_clones_as_the_nodes_runc_does_through_clm_runc() -> None:
    parsed = tomllib.loads(dropin(tomllib.loads(V3), Path("/opt/clm/bin/clm-runc")))
    runtime = parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["clm-restore"]
    assert parsed["version"] == 3
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["pod_annotations"] == ["cast.ai/restore"]
    assert runtime["options"] == {"SystemdCgroup": True, "BinaryName": "/opt/clm/bin/clm-runc"}


def test_containerd_1_style_configs_get_a_version_2_dropin() -> None:
    parsed = tomllib.loads(dropin(tomllib.loads(V2), Path("/opt/clm/bin/clm-runc")))
    runtime = parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["clm-restore"]
    assert parsed["version"] == 2 and runtime["options"]["SystemdCgroup"] is True


def test_install_is_idempotent_and_says_what_it_cannot_do(tmp_path: Path) -> None:
    binary = tmp_path / "image" / "clm-runc"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF binary")
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text(V3.replace("/etc/containerd/conf.d", str(tmp_path / "conf.d")))
    kwargs = {
        "binary": binary,
        "binary_target": tmp_path / "opt" / "clm-runc",
        "containerd_config": config,
        "dropin_dir": tmp_path / "conf.d",
    }
    first = install(**kwargs)
    assert len(first.actions) == 2 and first.problems == []
    assert (tmp_path / "opt" / "clm-runc").stat().st_mode & 0o777 == 0o755
    again = install(**kwargs)
    assert again.actions == [] and again.problems == []
    config.write_text(V2)  # no imports line
    lacking = install(**kwargs)
    assert any("does not import" in p for p in lacking.problems)
