from __future__ import annotations

import json
import os
from pathlib import Path

from services.checkpoint_agent.containerd import (
    apply_empty_dirs,
    apply_rootfs_diff,
    netns_of,
    overlay_upperdir,
    write_empty_dirs,
    write_rootfs_diff,
)

MOUNTINFO = (
    "29 1 0:26 / / rw - ext4 /dev/root rw\n"
    "812 29 0:88 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw,relatime - overlay "
    "overlay rw,lowerdir=/var/lib/containerd/snapshots/1/fs,"
    "upperdir=/var/lib/containerd/snapshots/7/fs,workdir=/var/lib/containerd/snapshots/7/work\n"
)


def test_the_rootfs_upperdir_is_read_from_mountinfo() -> None:
    rootfs = Path("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs")
    assert overlay_upperdir(rootfs, MOUNTINFO) == Path("/var/lib/containerd/snapshots/7/fs")
    assert overlay_upperdir(Path("/elsewhere"), MOUNTINFO) is None


def test_netns_of_a_config() -> None:
    config = {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}
    assert netns_of(config) == Path("/var/run/netns/cni-1")
    assert netns_of({"linux": {"namespaces": [{"type": "network"}]}}) is None


def test_the_changes_to_the_image_move_whole(tmp_path: Path) -> None:
    upper, package, rootfs = tmp_path / "upper", tmp_path / "package", tmp_path / "rootfs"
    for d in (upper / "srv" / "data", package, rootfs / "etc", rootfs / "srv"):
        d.mkdir(parents=True)
    (upper / "srv" / "data" / "db").write_bytes(os.urandom(4096))
    (upper / "srv" / "link").symlink_to("data/db")
    os.mknod(upper / "etc-gone", 0o020000 | 0o600, os.makedev(0, 0))  # a whiteout
    (rootfs / "etc-gone").write_text("from the image")
    (rootfs / "etc" / "keep").write_text("image file")

    deleted = write_rootfs_diff(upper, package)
    assert deleted == ["etc-gone"]
    assert json.loads((package / "deleted.files").read_text()) == ["etc-gone"]

    apply_rootfs_diff(package, rootfs)
    assert (rootfs / "srv" / "data" / "db").read_bytes() == (upper / "srv" / "data" / "db").read_bytes()
    assert os.readlink(rootfs / "srv" / "link") == "data/db"
    assert not (rootfs / "etc-gone").exists()
    assert (rootfs / "etc" / "keep").read_text() == "image file"


def test_emptydir_contents_go_to_the_clones_emptydir(tmp_path: Path) -> None:
    source_dir = tmp_path / "src" / "volumes" / "kubernetes.io~empty-dir" / "data"
    clone_dir = tmp_path / "clone" / "volumes" / "kubernetes.io~empty-dir" / "data"
    (source_dir / "sub").mkdir(parents=True)
    clone_dir.mkdir(parents=True)
    (source_dir / "sub" / "state.bin").write_bytes(os.urandom(10000))
    package = tmp_path / "package"
    package.mkdir()

    def config(directory: Path) -> dict:
        return {
            "mounts": [
                {"destination": "/data", "source": str(directory)},
                {"destination": "/srv", "source": "/opt"},
            ]
        }

    assert write_empty_dirs(config(source_dir), package) == ["data"]
    assert apply_empty_dirs(package, config(clone_dir)) == ["data"]
    assert (clone_dir / "sub" / "state.bin").read_bytes() == (source_dir / "sub" / "state.bin").read_bytes()
