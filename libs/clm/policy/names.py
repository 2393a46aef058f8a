"""The documented label and annotation names (Cast AI CLM seed documents), exactly."""

# Pod and node label: eligible pod / node that supports live migration.
MIGRATION_ENABLED = "live.cast.ai/migration-enabled"
# Node label: the node uses ENIConfig for dedicated pod subnets (custom networking).
CUSTOM_NETWORK = "live.cast.ai/custom-network"
# User pod labels.
REMOVAL_DISABLED = "autoscaling.cast.ai/removal-disabled"
LIVE_MIGRATION_DISABLED = "autoscaling.cast.ai/live-migration-disabled"

# Restore-behaviour annotations (comma-separated container names) on the source pod.
RESTORE_RUN_STARTUP_PROBE = "cast.ai/restore-run-startup-probe"
RESTORE_RUN_POST_START_EXEC = "cast.ai/restore-run-post-start-exec"
RESTORE_RUN_INIT_CONTAINERS = "cast.ai/restore-run-init-containers"
# System annotation on clone pods: created by restore from a checkpoint.
RESTORE = "cast.ai/restore"
# CLM's own annotation on clone pods: the UID the node runtime knows the pod's containers and
# network by. Restored containers keep the first pod's identity, so a clone moved again is
# found by this UID, not by its own.
RUNTIME_POD_UID = "live.cast.ai/runtime-pod-uid"
# CLM's own: the IP a clone takes over (a StatefulSet namesake's source object is gone when
# the node's CNI plugin wires it).
RESTORE_POD_IP = "live.cast.ai/restore-pod-ip"
# CLM's RuntimeClass for clone pods (deploy/kustomize ships it): its handler restores the
# clone's containers from their checkpoint instead of starting them from their images.
RESTORE_RUNTIME_CLASS = "clm-restore"

# Well-known Kubernetes labels the rules read.
ARCH = "kubernetes.io/arch"
HOSTNAME = "kubernetes.io/hostname"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
ZONE = "topology.kubernetes.io/zone"
SUBNET_ID = "topology.cast.ai/subnet-id"
# Zone keys a PersistentVolume's node affinity may use.
ZONE_KEYS = (ZONE, "failure-domain.beta.kubernetes.io/zone", "topology.ebs.csi.aws.com/zone")
MIRROR_POD = "kubernetes.io/config.mirror"

TRUE = "true"


def is_true(labels: dict[str, str] | None, key: str) -> bool:
    """Only the exact value "true" counts as true; anything else is false or missing."""
    return labels is not None and labels.get(key) == TRUE
