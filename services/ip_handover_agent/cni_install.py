"""install-cni: what the IP-handover agent's DaemonSet does to a node before the agent starts
(its init container runs `python -m services.ip_handover_agent.cni_install`).

- clm-cni (the static shim, /opt/clm/node/clm-cni in the image) is copied into the node's CNI
  bin directory, beside the node's own plugins (copied beside, then renamed: the runtime never
  runs a half-written plugin).
- With CLM_CNI_CHAIN=true, clm-cni is put in front of the node's CNI configuration: the first
  configuration in /etc/cni/net.d (the one the runtime uses) is written again as
  `00-clm.conflist`, which sorts first, with clm-cni as its first plugin and the node's primary
  plugin as clm-cni's `delegate` (the rest of the chain unchanged). clm-cni passes every pod but
  a clone straight to that primary plugin. Run again (every agent start) it follows changes of
  the primary configuration, and leaves a chain that is already right alone.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAINED = "00-clm.conflist"
PLUGIN = "clm-cni"


def chained(primary: dict[str, Any]) -> dict[str, Any]:
    """The node's configuration with clm-cni in front (a single-plugin .conf becomes a list)."""
    plugins = list(
        primary.get("plugins") or [{k: v for k, v in primary.items() if k not in ("cniVersion", "name")}]
    )
    if not plugins:
        raise ValueError(f"the CNI configuration {primary.get('name')!r} has no plugins")
    first, rest = plugins[0], plugins[1:]
    if first.get("type") == PLUGIN:
        return primary
    return {
        "cniVersion": primary.get("cniVersion", "1.0.0"),
        "name": primary.get("name", "pods"),
        "plugins": [{"type": PLUGIN, "delegate": first}, *rest],
    }


def primary_config(net_dir: Path) -> Path | None:
    """The configuration the runtime would load: the first by name, ours left out."""
    found = (
        sorted(
            p for p in net_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json") and p.name != CHAINED
        )
        if net_dir.is_dir()
        else []
    )
    return found[0] if found else None


def _write_atomically(target: Path, data: bytes, mode: int) -> None:
    partial = target.with_name(f".{target.name}.new")
    partial.write_bytes(data)
    partial.chmod(mode)
    os.replace(partial, target)


@dataclass
class Installed:
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def install(*, binary: Path, bin_dir: Path, net_dir: Path, chain: bool) -> Installed:
    result = Installed()
    if not binary.is_file():
        result.problems.append(f"{binary} is missing from the image")
        return result
    bin_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(bin_dir / PLUGIN, binary.read_bytes(), 0o755)
    result.done.append(f"installed {bin_dir / PLUGIN}")
    if not chain:
        return result
    primary = primary_config(net_dir)
    if primary is None:
        result.problems.append(
            f"no CNI configuration in {net_dir} to put clm-cni in front of: the node's network plugin "
            "writes one when it starts (install-cni runs again with the agent)"
        )
        return result
    try:
        wanted = chained(json.loads(primary.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        result.problems.append(f"{primary} cannot be chained: {exc}")
        return result
    target = net_dir / CHAINED
    data = (json.dumps(wanted, indent=2) + "\n").encode()
    if target.exists() and target.read_bytes() == data:
        result.done.append(f"{target} already chains {primary.name}")
    else:
        _write_atomically(target, data, 0o644)
        result.done.append(f"wrote {target}: clm-cni in front of {primary.name}")
    return result


def main() -> int:
    result = install(
        binary=Path(os.environ.get("CLM_CNI_BINARY", "/opt/clm/node/clm-cni")),
        bin_dir=Path(os.environ.get("CLM_CNI_BIN_DIR", "/host/opt/cni/bin")),
        net_dir=Path(os.environ.get("CLM_CNI_NET_DIR", "/host/etc/cni/net.d")),
        chain=os.environ.get("CLM_CNI_CHAIN", "false").lower() == "true",
    )
    print(json.dumps({"done": result.done, "problems": result.problems}))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
