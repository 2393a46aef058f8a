"""install-node: what a Kubernetes node needs for CLM, installed by the checkpoint agent's
DaemonSet (an init container, with the host's directories mounted at the same paths).

- clm-runc, the clm-restore RuntimeClass handler's binary, copied from the image to
  /opt/clm/bin (replaced only when it changed, by rename: a running shim keeps its copy);
- containerd's config drop-in declaring the `clm-restore` runtime: the node's own runc
  runtime options (SystemdCgroup and the rest, read from its config) with `BinaryName`
  pointing at clm-runc, and the `cast.ai/restore` annotation passed to it;
- what it cannot do safely by itself is said, not done: containerd's config must import the
  drop-in directory, and containerd loads a new runtime only when it restarts (the agent's
  capabilities then report the handler missing, and the labeler leaves the node unlabeled).

Run: python -m services.checkpoint_agent.node_install [--binary …] [--containerd-config …]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HANDLER = "clm-restore"
PASSED_ANNOTATIONS = ["cast.ai/restore"]
# containerd 2's CRI runtime plugin, and containerd 1.x's (config version 2).
RUNTIMES = {
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
}


@dataclass
class Installed:
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _dig(config: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        config = config.get(key) or {}
    return config


def runc_options(config: dict[str, Any], version: int) -> dict[str, Any]:
    """The options of the node's default runc runtime (what clones must run with too)."""
    runtimes = _dig(config, RUNTIMES[version])
    default = str(_dig(config, RUNTIMES[version][:-1]).get("default_runtime_name") or "runc")
    runtime = runtimes.get(default) or runtimes.get("runc") or {}
    return dict(runtime.get("options") or {})


def dropin(config: dict[str, Any], binary: Path) -> str:
    """The drop-in for a node whose main containerd config is `config`."""
    version = 3 if int(config.get("version", 2)) >= 3 else 2
    table = ".".join(f'"{k}"' if "." in k else k for k in (*RUNTIMES[version], HANDLER))
    options = {**runc_options(config, version), "BinaryName": str(binary)}
    lines = [
        "# Written by CLM's checkpoint agent (install-node): the clm-restore RuntimeClass handler.",
        f"version = {version}",
        f"[{table}]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"  pod_annotations = {json.dumps(PASSED_ANNOTATIONS)}",
        f"  [{table}.options]",
    ]
    lines += [f"    {key} = {json.dumps(value)}" for key, value in sorted(options.items())]
    return "\n".join(lines) + "\n"


def imported(config: dict[str, Any], config_path: Path, target: Path) -> bool:
    for pattern in config.get("imports") or []:
        absolute = pattern if os.path.isabs(pattern) else str(config_path.parent / pattern)
        if fnmatch.fnmatch(str(target), absolute):
            return True
    return False


def _write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.clm-new")
    partial.write_bytes(data)
    partial.chmod(mode)
    partial.rename(path)
    return True


def install(*, binary: Path, binary_target: Path, containerd_config: Path, dropin_dir: Path) -> Installed:
    done = Installed()
    if not binary.is_file():
        done.problems.append(f"{binary} is missing from the image: the handler cannot be installed")
        return done
    if _write_if_changed(binary_target, binary.read_bytes(), 0o755):
        done.actions.append(f"installed {binary_target}")
    try:
        config = tomllib.loads(containerd_config.read_text()) if containerd_config.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        done.problems.append(f"cannot read containerd's config {containerd_config}: {exc}")
        return done
    target = dropin_dir / "clm-restore.toml"
    if _write_if_changed(target, dropin(config, binary_target).encode(), 0o644):
        done.actions.append(f"wrote {target}: restart containerd to load the {HANDLER} runtime")
    if not imported(config, containerd_config, target):
        done.problems.append(
            f"containerd's config {containerd_config} does not import {target}: add "
            f'imports = ["{dropin_dir}/*.toml"] to it (then restart containerd)'
        )
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, default=Path("/opt/clm/node/clm-runc"))
    parser.add_argument("--binary-target", type=Path, default=Path("/opt/clm/bin/clm-runc"))
    parser.add_argument("--containerd-config", type=Path, default=Path("/etc/containerd/config.toml"))
    parser.add_argument("--dropin-dir", type=Path, default=Path("/etc/containerd/conf.d"))
    args = parser.parse_args(argv)
    done = install(
        binary=args.binary,
        binary_target=args.binary_target,
        containerd_config=args.containerd_config,
        dropin_dir=args.dropin_dir,
    )
    for action in done.actions or ["nothing to change"]:
        print(f"install-node: {action}")
    for problem in done.problems:
        print(f"install-node: PROBLEM: {problem}", file=sys.stderr)
    # Problems are reported, not fatal: the agent still runs (as a source), and its
    # capabilities say what this node lacks.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
