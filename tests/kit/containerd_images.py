"""The images a containerd node needs, built here (no registry is reachable) and saved as
tars to import: the pod sandbox's pause image and the pods' image.

- localhost/clm-pause:1: tests/kit/pause/pause.c, compiled static, FROM scratch.
- localhost/clm-pod:bookworm: clm-base:bookworm (python3.11; tools/images/build-bases).

Tars are kept in CACHE by image id, so each is saved once per machine.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker

from tests.kit.containerd_node import SANDBOX_IMAGE

CACHE = Path("/var/cache/clm/containerd-images")
POD_IMAGE = "localhost/clm-pod:bookworm"
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause" / "pause.c"


def _save(client: docker.DockerClient, tag: str) -> Path:
    image = client.images.get(tag)
    tar = CACHE / f"{tag.replace('/', '_').replace(':', '_')}-{image.id.split(':')[1][:16]}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial")
        with partial.open("wb") as out:
            # Saved by this name (an image's own `save` names it by its first tag).
            for chunk in client.api.get_image(tag):
                out.write(chunk)
        partial.rename(tar)
    return tar


def _pause(client: docker.DockerClient) -> None:
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is missing (it builds the pause image): run tools/setup/install-system-deps")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(PAUSE_SOURCE)], check=True)
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            tar.add(binary, arcname="pause")
            dockerfile = b'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        context.seek(0)
        client.images.build(fileobj=context, custom_context=True, tag=SANDBOX_IMAGE, rm=True)


def node_images() -> list[Path]:
    """The tars to import into every containerd node (built or saved when missing)."""
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        raise RuntimeError(
            f"the nodes' images are built with docker, and dockerd does not answer ({exc}): "
            "run tools/setup/ensure-docker"
        ) from exc
    try:
        try:
            client.images.get(SANDBOX_IMAGE)
        except docker.errors.ImageNotFound:
            _pause(client)
        try:
            client.images.get(POD_IMAGE)
        except docker.errors.ImageNotFound:
            client.images.get("clm-base:bookworm").tag(POD_IMAGE)
        return [_save(client, SANDBOX_IMAGE), _save(client, POD_IMAGE)]
    finally:
        client.close()
