"""Workload eligibility: the live controller's assessment (seed 002, "Requirements and
limitations"). Every reason is reported, not only the first, so `clm explain` shows all."""

from __future__ import annotations

from dataclasses import dataclass, field

from clm.policy import names
from clm.policy import objects as o
from clm.policy.reasons import Reason
from clm.policy.workloads import SUPPORTED_KINDS, Lookup, Workload, resolve

GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
# Volume types that move with the pod as they are.
PORTABLE_VOLUMES = ("emptyDir", "configMap", "secret", "projected", "downwardAPI", "nfs")
# PersistentVolume sources reachable from every node (no zone pin).
SHARED_PV_SOURCES = ("nfs", "cephfs", "glusterfs")
SHARED_CSI_DRIVERS = ("efs.csi.aws.com", "nfs.csi.k8s.io", "fsx.csi.aws.com")
# PVC access modes that let the clone mount the claim while the source still has it.
SHARED_ACCESS_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


@dataclass(frozen=True, slots=True)
class EligibilityConfig:
    # Owner kinds of "limited support" controllers the operator has assessed, by kind
    # ("Rollout") or group/kind ("argoproj.io/Rollout").
    allowed_custom_kinds: frozenset[str] = frozenset()
    # Experimental: allow hostPath volumes (the data stays behind on the source node).
    allow_host_path: bool = False


@dataclass(frozen=True, slots=True)
class Eligibility:
    eligible: bool
    workload: Workload
    # Why the pod is not eligible (empty when eligible).
    reasons: tuple[Reason, ...] = ()
    # Facts that do not block eligibility but shape what happens (opt-out, zone pins).
    notes: tuple[Reason, ...] = ()
    # The destination must be in one of these zones; None: any zone.
    zones: frozenset[str] | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _is_gpu(resource: str) -> bool:
    return resource in GPU_RESOURCES or ("/" in resource and "gpu" in resource.lower())


def _owner_reasons(workload: Workload, pod: o.Obj, config: EligibilityConfig) -> list[Reason]:
    if workload.kind == "DaemonSet":
        return [
            Reason(
                "owner-daemonset", f"DaemonSet pods cannot be migrated by design (owned by {workload.name})"
            )
        ]
    if workload.kind == "Node" or names.MIRROR_POD in o.annotations(pod):
        return [Reason("static-pod", "static (mirror) pods are managed by the kubelet and cannot move")]
    if workload.kind in SUPPORTED_KINDS:
        return []
    if workload.kind in config.allowed_custom_kinds or workload.qualified_kind in config.allowed_custom_kinds:
        return []
    return [
        Reason(
            "owner-unsupported",
            f"owned by {workload.qualified_kind} {workload.name!r}, a custom controller with"
            " limited support: add its kind to the allowed custom kinds after assessing it",
        )
    ]


def _container_reasons(pod: o.Obj) -> list[Reason]:
    reasons = []
    for c in o.running_containers(pod):
        if c.get("tty"):
            reasons.append(Reason("tty", f"container {c.get('name')!r} has tty: true"))
    for c in [*o.containers(pod), *o.init_containers(pod)]:
        res = c.get("resources") or {}
        wanted = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        gpus = sorted(r for r in wanted if _is_gpu(r))
        if gpus:
            reasons.append(Reason("gpu", f"container {c.get('name')!r} requests {', '.join(gpus)}"))
    return reasons


def _pod_level_reasons(pod: o.Obj) -> list[Reason]:
    spec = o.spec(pod)
    reasons = [
        Reason(f"host-{k.removeprefix('host').lower()}", f"the pod uses {k}: true")
        for k in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(k)
    ]
    if o.meta(pod).get("deletionTimestamp"):
        reasons.append(Reason("terminating", "the pod is terminating"))
    phase = o.status(pod).get("phase")
    if phase != "Running":
        reasons.append(Reason("not-running", f"the pod is {phase or 'not yet scheduled'}, not Running"))
    return reasons


def _pv_zones(pv: o.Obj) -> frozenset[str]:
    zones: set[str] = set()
    affinity = (o.spec(pv).get("nodeAffinity") or {}).get("required") or {}
    for term in affinity.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") in names.ZONE_KEYS and expr.get("operator") == "In":
                zones.update(expr.get("values") or [])
    for key in names.ZONE_KEYS:
        if key in o.labels(pv):
            zones.add(o.labels(pv)[key])
    return frozenset(zones)


def _pv_node_bound(pv: o.Obj) -> bool:
    affinity = (o.spec(pv).get("nodeAffinity") or {}).get("required") or {}
    return any(
        expr.get("key") == names.HOSTNAME
        for term in affinity.get("nodeSelectorTerms") or []
        for expr in term.get("matchExpressions") or []
    )


def _attach_order_reason(vname: str, claim: str, pvc: o.Obj, workload: Workload) -> Reason | None:
    """A volume only one node may mount (ReadWriteOnce, ReadWriteOncePod) can follow the pod
    only where the clone needs it after the source let go: a StatefulSet pod's namesake is
    created once the source object is deleted; any other clone exists, on another node, while
    the source still holds the volume, and kubelet would never start it."""
    modes = set(o.spec(pvc).get("accessModes") or ["ReadWriteOnce"])
    if modes & SHARED_ACCESS_MODES or workload.kind == "StatefulSet":
        return None
    return Reason(
        "volume-attached-once",
        f"volume {vname!r}: PVC {claim!r} is {', '.join(sorted(modes))}: a {workload.kind or 'bare'} "
        "pod's clone runs on the destination while the source still holds the volume, so it cannot mount it "
        "(only a StatefulSet pod, whose namesake follows the source's deletion, takes such a volume along; "
        "or use a ReadWriteMany claim)",
    )


def _volume_reasons(
    pod: o.Obj, lookup: Lookup, config: EligibilityConfig, workload: Workload
) -> tuple[list[Reason], list[Reason], frozenset[str] | None]:
    reasons: list[Reason] = []
    notes: list[Reason] = []
    zones: frozenset[str] | None = None

    def pin(to: frozenset[str], why: str) -> None:
        nonlocal zones
        zones = to if zones is None else zones & to
        notes.append(Reason("zone-pinned", f"{why} pins the destination to zone {', '.join(sorted(to))}"))

    ns = o.namespace(pod)
    for vol in o.spec(pod).get("volumes") or []:
        vname = vol.get("name", "?")
        kinds = [k for k in vol if k != "name"]
        kind = kinds[0] if kinds else "unknown"
        if kind in PORTABLE_VOLUMES:
            continue
        if kind == "hostPath":
            if not config.allow_host_path:
                reasons.append(
                    Reason(
                        "host-path",
                        f"volume {vname!r} is a hostPath volume" " (experimental support is switched off)",
                    )
                )
            continue
        if kind == "awsElasticBlockStore":
            node = lookup("Node", "", o.spec(pod).get("nodeName", ""))
            zone = o.labels(node).get(names.ZONE) if node else None
            if zone:
                pin(frozenset({zone}), f"EBS volume {vname!r}")
            continue
        if kind in ("persistentVolumeClaim", "ephemeral"):
            claim = (
                vol[kind].get("claimName") if kind == "persistentVolumeClaim" else f"{o.name(pod)}-{vname}"
            )
            pvc = lookup("PersistentVolumeClaim", ns, claim)
            if pvc is None:
                reasons.append(Reason("pvc-missing", f"volume {vname!r}: PVC {claim!r} not found"))
                continue
            pv_name = o.spec(pvc).get("volumeName")
            pv = lookup("PersistentVolume", "", pv_name) if pv_name else None
            if pv is None:
                reasons.append(Reason("pvc-unbound", f"volume {vname!r}: PVC {claim!r} is not bound"))
                continue
            attach = _attach_order_reason(vname, claim, pvc, workload)
            if attach is not None:
                reasons.append(attach)
                continue
            pv_spec = o.spec(pv)
            csi_driver = (pv_spec.get("csi") or {}).get("driver", "")
            if any(src in pv_spec for src in SHARED_PV_SOURCES) or csi_driver in SHARED_CSI_DRIVERS:
                continue
            if "hostPath" in pv_spec or "local" in pv_spec or _pv_node_bound(pv):
                reasons.append(
                    Reason("node-local-volume", f"volume {vname!r}: PV {pv_name!r} is bound to one node")
                )
                continue
            pv_zones = _pv_zones(pv)
            if pv_zones:
                pin(pv_zones, f"PVC {claim!r}")
            continue
        reasons.append(Reason("volume-unsupported", f"volume {vname!r} has unsupported type {kind}"))
    return reasons, notes, zones


def assess(pod: o.Obj, lookup: Lookup, config: EligibilityConfig | None = None) -> Eligibility:
    """Is this pod eligible for live migration (the live.cast.ai/migration-enabled label)?"""
    config = config or EligibilityConfig()
    workload = resolve(pod, lookup)
    reasons = [*_owner_reasons(workload, pod, config), *_pod_level_reasons(pod), *_container_reasons(pod)]
    volume_reasons, notes, zones = _volume_reasons(pod, lookup, config, workload)
    reasons += volume_reasons
    pod_labels = o.labels(pod)
    if names.is_true(pod_labels, names.LIVE_MIGRATION_DISABLED):
        notes.append(
            Reason(
                "opted-out",
                f"{names.LIVE_MIGRATION_DISABLED}=true: the Evictor evicts"
                " this pod instead of live-migrating it",
            )
        )
    if names.is_true(pod_labels, names.REMOVAL_DISABLED):
        notes.append(
            Reason(
                "removal-disabled",
                f"{names.REMOVAL_DISABLED}=true: never evicted; restored"
                " on the source node if a live migration fails",
            )
        )
    return Eligibility(
        eligible=not reasons, workload=workload, reasons=tuple(reasons), notes=tuple(notes), zones=zones
    )
