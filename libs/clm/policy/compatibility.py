"""Can a pod move from one node to another? (seed 002, "Node infrastructure requirements")

Checks that hold everywhere: both nodes carry live.cast.ai/migration-enabled=true, same
architecture, Kubernetes >= 1.30, containerd >= 2, and with custom networking (source
labelled live.cast.ai/custom-network=true) the same zone. The EKS profile adds what is
specific to Cast AI on AWS: Amazon Linux 2023, the same instance generation set, and the
same subnet (topology.cast.ai/subnet-id) with standard networking. The generic profile
leaves those out so the rules work off AWS; CPU features are still checked per migration
by the checkpoint agent (`criu cpuinfo check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from clm.policy import instance_families, names
from clm.policy import objects as o
from clm.policy.reasons import Reason


class Profile(StrEnum):
    EKS = "eks"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class Requirements:
    profile: Profile = Profile.EKS
    min_kubernetes: tuple[int, int] = (1, 30)
    # Container runtime name -> minimum (major, minor).
    runtimes: tuple[tuple[str, tuple[int, int]], ...] = (("containerd", (2, 0)),)
    os_image_prefix: str = "Amazon Linux 2023"


DEFAULT_REQUIREMENTS = Requirements()


def _version(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def node_problems(node: o.Obj, req: Requirements) -> list[Reason]:
    """What keeps one node from taking part in live migration at all."""
    name = o.name(node)
    labels = o.labels(node)
    info = o.status(node).get("nodeInfo") or {}
    problems = []
    if not names.is_true(labels, names.MIGRATION_ENABLED):
        problems.append(Reason("node-not-enabled", f"node {name} lacks {names.MIGRATION_ENABLED}=true"))
    kubelet = _version(info.get("kubeletVersion", ""))
    if kubelet is None or kubelet < req.min_kubernetes:
        want = ".".join(map(str, req.min_kubernetes))
        problems.append(
            Reason(
                "kubernetes-too-old",
                f"node {name} runs Kubernetes "
                f"{info.get('kubeletVersion') or 'unknown'}; live migration needs {want}+",
            )
        )
    runtime, _, runtime_version = (info.get("containerRuntimeVersion") or "").partition("://")
    minimum = dict(req.runtimes).get(runtime)
    parsed = _version(runtime_version)
    if minimum is None or parsed is None or parsed < minimum:
        wanted = ", ".join(f"{n} {'.'.join(map(str, v))}+" for n, v in req.runtimes)
        running = info.get("containerRuntimeVersion") or "an unknown runtime"
        problems.append(Reason("runtime-unsupported", f"node {name} runs {running}; needs {wanted}"))
    if req.profile is Profile.EKS:
        if not (info.get("osImage") or "").startswith(req.os_image_prefix):
            problems.append(
                Reason(
                    "os-image-unsupported",
                    f"node {name} runs "
                    f"{info.get('osImage') or 'an unknown OS'}; the EKS profile needs "
                    f"{req.os_image_prefix}",
                )
            )
        if instance_families.generation_set(labels.get(names.INSTANCE_TYPE, "")) is None:
            problems.append(
                Reason(
                    "unknown-instance-family",
                    f"node {name}: instance type "
                    f"{labels.get(names.INSTANCE_TYPE) or '(none)'} is in no known "
                    "CPU generation set",
                )
            )
    return problems


def pair_problems(source: o.Obj, dest: o.Obj, req: Requirements) -> list[Reason]:
    """What keeps a pod on `source` from moving to `dest`, given both nodes are usable."""
    src_name, dst_name = o.name(source), o.name(dest)
    src, dst = o.labels(source), o.labels(dest)
    problems = []
    if src_name == dst_name:
        problems.append(Reason("same-node", f"source and destination are both {src_name}"))
    if not src.get(names.ARCH) or src.get(names.ARCH) != dst.get(names.ARCH):
        problems.append(
            Reason(
                "arch-mismatch",
                f"{src_name} is {src.get(names.ARCH) or 'unknown'}, "
                f"{dst_name} is {dst.get(names.ARCH) or 'unknown'}",
            )
        )
    if req.profile is Profile.EKS:
        src_type, dst_type = src.get(names.INSTANCE_TYPE, ""), dst.get(names.INSTANCE_TYPE, "")
        src_set = instance_families.generation_set(src_type)
        dst_set = instance_families.generation_set(dst_type)
        if src_set and dst_set and src_set != dst_set:
            problems.append(
                Reason(
                    "instance-generation-mismatch",
                    f"{instance_families.family(src_type)} ({src_set}) and "
                    f"{instance_families.family(dst_type)} ({dst_set}) are different CPU generation sets",
                )
            )
    if names.is_true(src, names.CUSTOM_NETWORK):
        if not src.get(names.ZONE) or src.get(names.ZONE) != dst.get(names.ZONE):
            problems.append(
                Reason(
                    "zone-mismatch",
                    "custom networking (ENIConfig is per zone): "
                    f"{src_name} is in {src.get(names.ZONE) or 'unknown'}, "
                    f"{dst_name} in {dst.get(names.ZONE) or 'unknown'}",
                )
            )
    elif req.profile is Profile.EKS and (
        not src.get(names.SUBNET_ID) or src.get(names.SUBNET_ID) != dst.get(names.SUBNET_ID)
    ):
        problems.append(
            Reason(
                "subnet-mismatch",
                "standard networking needs one subnet: "
                f"{src_name} is in {src.get(names.SUBNET_ID) or 'unknown'}, "
                f"{dst_name} in {dst.get(names.SUBNET_ID) or 'unknown'}",
            )
        )
    return problems


def compatible(source: o.Obj, dest: o.Obj, req: Requirements = DEFAULT_REQUIREMENTS) -> list[Reason]:
    """Every reason a live migration from `source` to `dest` cannot happen (empty: it can)."""
    return [*node_problems(source, req), *node_problems(dest, req), *pair_problems(source, dest, req)]


def class_key(node: o.Obj, req: Requirements) -> tuple[object, ...]:
    """Nodes with equal keys are interchangeable for `pair_problems` (names aside), so the
    planner can check compatibility once per pair of classes."""
    labels = o.labels(node)
    return (
        labels.get(names.ARCH),
        instance_families.generation_set(labels.get(names.INSTANCE_TYPE, ""))
        if req.profile is Profile.EKS
        else None,
        names.is_true(labels, names.CUSTOM_NETWORK),
        labels.get(names.ZONE),
        labels.get(names.SUBNET_ID) if req.profile is Profile.EKS else None,
    )
