"""What kubelet sends containerd for a pod, over CRI: a stand-in for kubelet (which cannot run
here) that the containerd tests and the sandbox drive their nodes with.

It translates a Kubernetes pod object the way kubelet does (pkg/kubelet/kuberuntime):
the sandbox config carries the pod's labels and annotations plus kubelet's own
`io.kubernetes.pod.*` labels, its own network namespace (CNI), a PID namespace per
container; each container config the container's command, env, volume mounts and log path
`<container>/<attempt>.log` under the pod's log directory. `runtimeClassName` picks the
runtime handler. Volumes: hostPath and emptyDir (a directory under the pod's directory, as
/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clm.runtime.cri import api_pb2 as api
from clm.runtime.cri.client import CriClient

POD_NAME, POD_NAMESPACE, POD_UID = (
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.uid",
)
CONTAINER_NAME = "io.kubernetes.container.name"
EMPTY_DIR = "kubernetes.io~empty-dir"


def _meta(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = pod["metadata"]
    return meta["namespace"], meta["name"], meta["uid"]


def pod_dir(kubelet_dir: Path, pod: Mapping[str, Any]) -> Path:
    return kubelet_dir / "pods" / _meta(pod)[2]


def empty_dir(kubelet_dir: Path, pod: Mapping[str, Any], volume: str) -> Path:
    return pod_dir(kubelet_dir, pod) / "volumes" / EMPTY_DIR / volume


def pod_log_dir(config: api.PodSandboxConfig) -> Path:
    """Where the pod's container logs go: `<container>/<attempt>.log` under it."""
    return Path(config.log_directory)


def sandbox_config(pod: Mapping[str, Any], *, kubelet_dir: Path, cgroup_root: str) -> api.PodSandboxConfig:
    namespace, name, uid = _meta(pod)
    labels = dict(pod["metadata"].get("labels") or {})
    labels.update({POD_NAME: name, POD_NAMESPACE: namespace, POD_UID: uid})
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=name,
        log_directory=str(kubelet_dir / "logs" / f"{namespace}_{name}_{uid}"),
        labels=labels,
        annotations=dict(pod["metadata"].get("annotations") or {}),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=f"{cgroup_root}/pod{uid}",
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.POD, pid=api.CONTAINER, ipc=api.POD)
            ),
        ),
    )


def _mounts(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    kubelet_dir: Path,
    volume_dirs: Mapping[str, Path] | None = None,
) -> list[api.Mount]:
    """`volume_dirs`: the host directories the node prepared for volumes other than hostPath
    and emptyDir (configMap, secret, a claim's volume)."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ValueError(f"container {container['name']} mounts unknown volume {mount['name']}")
        if "hostPath" in volume:
            host = Path(volume["hostPath"]["path"])
        elif "emptyDir" in volume:
            host = empty_dir(kubelet_dir, pod, mount["name"])
        elif volume_dirs is not None and mount["name"] in volume_dirs:
            host = volume_dirs[mount["name"]]
        else:
            kinds = [k for k in volume if k != "name"]
            raise ValueError(f"volume {mount['name']}: {kinds} volumes are not prepared on this node")
        mounts.append(
            api.Mount(
                container_path=mount["mountPath"],
                host_path=str(host),
                readonly=bool(mount.get("readOnly", False)),
            )
        )
    return mounts


def container_config(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    kubelet_dir: Path,
    attempt: int = 0,
    volume_dirs: Mapping[str, Path] | None = None,
) -> api.ContainerConfig:
    namespace, name, uid = _meta(pod)
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=container["name"], attempt=attempt),
        image=api.ImageSpec(image=container["image"]),
        command=list(container.get("command") or []),
        args=list(container.get("args") or []),
        working_dir=container.get("workingDir", ""),
        envs=[
            # The Debian CRI proto declares KeyValue.value as bytes (wire-compatible with string).
            api.KeyValue(key=e["name"], value=str(e.get("value", "")).encode())
            for e in container.get("env") or []
        ],
        mounts=_mounts(pod, container, kubelet_dir, volume_dirs),
        log_path=f"{container['name']}/{attempt}.log",
        labels={CONTAINER_NAME: container["name"], POD_NAME: name, POD_NAMESPACE: namespace, POD_UID: uid},
        annotations={"io.kubernetes.container.restartCount": str(attempt)},
        linux=api.LinuxContainerConfig(
            security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(network=api.POD, pid=api.CONTAINER, ipc=api.POD)
            )
        ),
    )


@dataclass
class RunningPod:
    sandbox_id: str
    containers: dict[str, str]  # container name -> CRI container id
    sandbox: api.PodSandboxConfig


class Kubelet:
    """One node's kubelet, as far as starting and removing pods over CRI goes."""

    def __init__(self, cri: CriClient, *, kubelet_dir: Path, cgroup_root: str) -> None:
        self.cri, self.kubelet_dir, self.cgroup_root = cri, kubelet_dir, cgroup_root

    def make_empty_dir(self, pod: Mapping[str, Any], volume: str) -> Path:
        path = empty_dir(self.kubelet_dir, pod, volume)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_pod(self, pod: Mapping[str, Any]) -> RunningPod:
        """RunPodSandbox, then CreateContainer and StartContainer for each container, as kubelet's
        SyncPod does for a new pod (volumes made first)."""
        for volume in pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                self.make_empty_dir(pod, volume["name"])
        config = sandbox_config(pod, kubelet_dir=self.kubelet_dir, cgroup_root=self.cgroup_root)
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        handler = pod["spec"].get("runtimeClassName") or ""
        sandbox_id = self.cri.run_pod_sandbox(config, runtime_handler=handler)
        running = RunningPod(sandbox_id=sandbox_id, containers={}, sandbox=config)
        for container in pod["spec"]["containers"]:
            ccfg = container_config(pod, container, kubelet_dir=self.kubelet_dir)
            container_id = self.cri.create_container(sandbox_id, ccfg, config)
            running.containers[container["name"]] = container_id
            self.cri.start_container(container_id)
        return running

    def remove_pod(self, running: RunningPod, *, grace_seconds: int = 0) -> None:
        """What kubelet does when the pod object is deleted: stop each container, then the
        sandbox (CNI DEL), then remove them."""
        for container_id in running.containers.values():
            self.cri.stop_container(container_id, grace_seconds=grace_seconds)
        self.cri.stop_pod_sandbox(running.sandbox_id)
        self.cri.remove_pod_sandbox(running.sandbox_id)
