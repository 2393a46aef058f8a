"""The standard container checkpoint archive (as CRI-O, Podman and kubelet's forensic
checkpoints write it, and `checkpointctl` reads it), made from a container's package:

    checkpoint/       CRIU's images (the package's criu/)
    spec.dump         the container's OCI runtime spec (config.json)
    config.dump       who the container is: id, name, image, runtime, times
    rootfs-diff.tar   what it changed in its image's root filesystem
    deleted.files     what it deleted from it (JSON list)
    stats-dump        CRIU's dump statistics
"""

from __future__ import annotations

import json
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

IMAGE_NAME = "io.kubernetes.cri.image-name"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
CONFIG_DUMP = "config.dump"


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_config_dump(package: Path, *, container_id: str, created: float, runtime: str = "runc") -> None:
    """config.dump for the package's container, from its spec's CRI annotations."""
    annotations = json.loads((package / "config.json").read_text()).get("annotations") or {}
    image = annotations.get(IMAGE_NAME, "")
    config = {
        "id": container_id,
        "name": annotations.get(CONTAINER_NAME, package.name),
        "rootfsImage": image,
        "rootfsImageName": image,
        "runtime": runtime,
        "createdTime": _rfc3339(created),
        "checkpointedTime": _rfc3339(time.time()),
        "restoredTime": "0001-01-01T00:00:00Z",
        "restored": False,
    }
    (package / CONFIG_DUMP).write_text(json.dumps(config))


def write_archive(package: Path, target: Path) -> Path:
    """The package as a checkpoint archive at `target` (uncompressed tar)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(package / "criu", arcname="checkpoint")
        tar.add(package / "config.json", arcname="spec.dump")
        for name in (CONFIG_DUMP, "rootfs-diff.tar", "deleted.files"):
            if (package / name).exists():
                tar.add(package / name, arcname=name)
        if (package / "criu" / "stats-dump").exists():
            tar.add(package / "criu" / "stats-dump", arcname="stats-dump")
    partial.rename(target)
    return target


def archive_name(namespace: str, pod: str, container: str, *, at: float | None = None) -> str:
    """kubelet's naming: checkpoint-<pod>_<namespace>-<container>-<time>.tar"""
    stamp = datetime.fromtimestamp(at or time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"checkpoint-{pod}_{namespace}-{container}-{stamp}.tar"
