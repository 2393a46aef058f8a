from __future__ import annotations

import json
from pathlib import Path

from services.ip_handover_agent.cni_install import CHAINED, chained, install

AWS = {
    "cniVersion": "0.4.0",
    "name": "aws-cni",
    "plugins": [{"type": "aws-cni", "mtu": "9001"}, {"type": "egress-cni"}, {"type": "portmap"}],
}


def test_clm_cni_goes_in_front_and_the_primary_becomes_its_delegate() -> None:
    out = chained(AWS)
    assert out["name"] == "aws-cni" and out["cniVersion"] == "0.4.0"
    assert out["plugins"][0] == {"type": "clm-cni", "delegate": {"type": "aws-cni", "mtu": "9001"}}
    assert out["plugins"][1:] == AWS["plugins"][1:]
    assert chained(out) == out  # already chained: left alone
    single = chained({"cniVersion": "1.0.0", "name": "pods", "type": "bridge", "bridge": "cni0"})
    assert single["plugins"] == [{"type": "clm-cni", "delegate": {"type": "bridge", "bridge": "cni0"}}]


def _node(tmp_path: Path) -> tuple[Path, Path, Path]:
    binary = tmp_path / "image" / "clm-cni"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF shim")
    net = tmp_path / "net.d"
    net.mkdir()
    return binary, tmp_path / "bin", net


def test_install_copies_the_shim_and_chains_the_first_configuration(tmp_path: Path) -> None:
    binary, bin_dir, net = _node(tmp_path)
    (net / "10-aws.conflist").write_text(json.dumps(AWS))
    (net / "99-other.conf").write_text(json.dumps({"name": "x", "type": "bridge"}))
    done = install(binary=binary, bin_dir=bin_dir, net_dir=net, chain=True)
    assert done.problems == []
    assert (bin_dir / "clm-cni").read_bytes() == b"\x7fELF shim" and (
        bin_dir / "clm-cni"
    ).stat().st_mode & 0o111
    written = json.loads((net / CHAINED).read_text())
    assert written["plugins"][0]["delegate"]["type"] == "aws-cni"
    again = install(binary=binary, bin_dir=bin_dir, net_dir=net, chain=True)
    assert any("already chains 10-aws.conflist" in d for d in again.done)
    assert sorted(p.name for p in net.iterdir()) == [CHAINED, "10-aws.conflist", "99-other.conf"]


def test_without_chaining_only_the_binary_is_installed(tmp_path: Path) -> None:
    binary, bin_dir, net = _node(tmp_path)
    assert install(binary=binary, bin_dir=bin_dir, net_dir=net, chain=False).problems == []
    assert not (net / CHAINED).exists()


def test_chaining_with_no_configuration_yet_says_so(tmp_path: Path) -> None:
    binary, bin_dir, net = _node(tmp_path)
    problems = install(binary=binary, bin_dir=bin_dir, net_dir=net, chain=True).problems
    assert len(problems) == 1 and "no CNI configuration" in problems[0]
