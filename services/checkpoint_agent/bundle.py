"""OCI bundles for pod containers run by runc (the local node runtime and the tests).

The root filesystem exposes the host's installed programs read-only (/usr and /etc bound
in; /bin, /sbin, /lib, /lib64 as merged-/usr symlinks — bind-mounting those symlinked
directories themselves breaks CRIU's mount restore), plus an application directory at
/srv. The network namespace is given by path, so runc and CRIU treat it as external and a
checkpoint can be restored into another namespace holding the same IP.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOTFS_DIRS = ("proc", "dev", "sys", "tmp", "usr", "etc", "srv", "run", "var/tmp")
MERGED_USR_LINKS = ("bin", "sbin", "lib", "lib64")


def write_bundle(
    bundle: Path,
    *,
    args: list[str],
    netns: Path,
    app_dir: Path | None = None,
    env: dict[str, str] | None = None,
    hostname: str = "pod",
    annotations: dict[str, str] | None = None,
    cgroups_path: str | None = None,
) -> Path:
    """Create `bundle` (config.json + rootfs) for a container running `args`."""
    rootfs = bundle / "rootfs"
    for d in ROOTFS_DIRS:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    for link in MERGED_USR_LINKS:
        target = rootfs / link
        if not target.is_symlink():
            target.symlink_to(f"usr/{link}")
    proc = subprocess.run(
        ["runc", "spec", "--bundle", str(bundle)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise RuntimeError(f"runc spec failed: {proc.stderr.strip()}")
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    process["terminal"] = False
    process["args"] = args
    process["env"] = [f"{k}={v}" for k, v in {"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}.items()]
    process["cwd"] = "/srv"
    config["root"] = {"path": "rootfs", "readonly": False}
    config["hostname"] = hostname
    mounts = [m for m in config["mounts"] if m["destination"] not in ("/usr", "/etc", "/srv")]
    for d in ("usr", "etc"):
        mounts.append({"destination": f"/{d}", "type": "bind", "source": f"/{d}", "options": ["rbind", "ro"]})
    if app_dir is not None:
        mounts.append(
            {"destination": "/srv", "type": "bind", "source": str(app_dir), "options": ["rbind", "ro"]}
        )
    config["mounts"] = mounts
    namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    namespaces.append({"type": "network", "path": str(netns)})
    config["linux"]["namespaces"] = namespaces
    if annotations:
        config["annotations"] = dict(annotations)
    if cgroups_path:
        config["linux"]["cgroupsPath"] = cgroups_path
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def rebind(config: dict[str, Any], *, netns: Path, cgroups_path: str | None) -> dict[str, Any]:
    """A container's config as shipped from the source, pointed at this node's network
    namespace for the pod and this node's cgroup."""
    config = json.loads(json.dumps(config))
    for n in config["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = str(netns)
    if cgroups_path:
        config["linux"]["cgroupsPath"] = cgroups_path
    return config


def config_problems(config: dict[str, Any]) -> list[str]:
    """What in a container's config stops it from moving (before anything is frozen)."""
    problems = []
    if config.get("process", {}).get("terminal"):
        problems.append("a TTY is attached (process.terminal): CRIU cannot move a terminal")
    for device in config.get("linux", {}).get("devices") or []:
        path = str(device.get("path", ""))
        if any(gpu in path for gpu in ("/dev/nvidia", "/dev/dri", "/dev/kfd", "/dev/neuron")):
            problems.append(f"GPU device {path} is attached: its state cannot be checkpointed")
    if not any(
        n.get("type") == "network" and n.get("path") for n in config.get("linux", {}).get("namespaces", [])
    ):
        problems.append("the container has no external network namespace: its IP cannot be handed over")
    return problems


def set_netns(bundle: Path, netns: Path) -> None:
    """Point an existing bundle at another network namespace (before a restore)."""
    config = json.loads((bundle / "config.json").read_text())
    for n in config["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = str(netns)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
