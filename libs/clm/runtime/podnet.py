"""Where a pod's network namespace lives on a node, shared by the two node agents.

The IP-handover agent creates the namespace of a pod arriving on a node (prepare); the
checkpoint agent restores the pod's containers into it. Both derive its name from the node
and the pod's UID, so neither needs to tell the other.
"""

from __future__ import annotations

from pathlib import Path

NETNS_DIR = Path("/var/run/netns")


def pod_netns_name(node: str, pod_uid: str) -> str:
    return f"clm-{node}-{pod_uid[:12]}"


def pod_netns_path(node: str, pod_uid: str, netns_dir: Path = NETNS_DIR) -> Path:
    return netns_dir / pod_netns_name(node, pod_uid)
