"""One sandbox node as Kubernetes runs it: a real containerd 2.1 in the node's network
namespace (CNI: clm-cni, routed, host-local addresses from the node's own range; CLM's
`clm-restore` RuntimeClass handler installed as the checkpoint agent's install-node does) and a
kubelet stand-in that drives it over CRI — sandbox code, never part of a deployment.

The stand-in does what kubelet's sync loop does for the pods bound to its node, and nothing a
real kubelet would not do: no special case for migrations. A new pod gets RunPodSandbox, then
CreateContainer and StartContainer per container (a clone pod's `runtimeClassName:
clm-restore` sends its containers to CLM's handler, which restores them); its status
(phase, IP, container states) is reported from what CRI says; an exited container restarts as
`restartPolicy` says, with kubelet's back-off; a pod whose object is gone is torn down (stop,
StopPodSandbox — CNI DEL —, RemovePodSandbox).

`decide` is the pure policy; `KubeletNode` applies it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from clm.policy import objects as o
from clm.runtime.cri import api_pb2 as api
from clm.runtime.cri.client import CriClient, CriError, state_name
from tests.kit.containerd_images import POD_IMAGE
from tests.kit.containerd_node import ContainerdNode, routed_cni_conf
from tests.kit.kubelet import (
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    Kubelet,
    container_config,
    pod_log_dir,
    sandbox_config,
)
from tools.sandbox.lifecycle import after_exit, pod_phase, restart_delay
from tools.sandbox.log_server import LogServer

log = logging.getLogger("clm.sandbox.kubelet")

# One sandbox per machine (its lock): the nodes' sockets have fixed, short paths.
SOCKETS = Path("/run/clm-sbx")
# The sandbox's stand-in NFS server: an nfs PV's export is this host's directory
# NFS_ROOT/<server>/<path>, which every node (one machine) sees, as every node mounts one export.
NFS_ROOT = Path("/var/lib/clm-sandbox-nfs")
# A pod whose start failed is tried again after this long (kubelet's back-off, shortened).
START_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Actions:
    start: tuple[o.Obj, ...] = ()
    remove: tuple[str, ...] = ()  # pod UIDs whose sandboxes go


def decide(
    pods: list[o.Obj],
    present: set[str],
    busy: set[str],
    retry_at: dict[str, float],
    now: float,
    running: set[str] | None = None,
) -> Actions:
    """`pods`: bound to this node; `present`: pod UIDs with a sandbox here; `busy`: UIDs being
    started or torn down right now; `retry_at`: when a pod whose start failed may be tried again;
    `running`: the UIDs this kubelet runs (None: every present one). A sandbox no pod explains goes,
    and so does one this kubelet does not run (a start that failed half-way): its pod starts anew
    once it is gone. A pod that finished, or is being deleted, is not started."""
    wanted = {o.uid(p) for p in pods}
    stale = present - (present if running is None else running)
    start = tuple(
        p
        for p in pods
        if o.uid(p) not in present | busy
        and retry_at.get(o.uid(p), 0.0) <= now
        and o.status(p).get("phase") not in ("Succeeded", "Failed")
        and not o.meta(p).get("deletionTimestamp")
    )
    remove = tuple(sorted(((present - wanted) | stale) - busy))
    return Actions(start=start, remove=remove)


def image_problem(image: str, present: set[str]) -> str | None:
    """Why a container's image cannot run here (no registry is reachable from the sandbox)."""
    if image in present or f"docker.io/library/{image}" in present:
        return None
    return (
        f"image {image!r} is not on this node and the sandbox reaches no registry: use {POD_IMAGE} "
        "(Debian bookworm with python3.11), which every sandbox node has"
    )


def volume_files(volume: o.Obj, obj: o.Obj | None) -> dict[str, bytes]:
    """What kubelet writes into a configMap or secret volume: each key (or the `items` asked
    for, at their paths), from the object's data. Raises when the object is missing."""
    kind = "configMap" if "configMap" in volume else "secret"
    source = volume[kind]
    name = source.get("name") if kind == "configMap" else source.get("secretName")
    if obj is None:
        if source.get("optional"):
            return {}
        raise ValueError(f"volume {volume['name']}: {kind} {name!r} not found")
    data: dict[str, bytes] = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    if kind == "secret":
        data = {k: base64.b64decode(v) for k, v in data.items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    items = source.get("items")
    if not items:
        return data
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


@dataclass
class PodHere:
    """A pod this kubelet runs: its sandbox and the latest container of each name."""

    pod: o.Obj
    sandbox_id: str
    sandbox: api.PodSandboxConfig
    containers: dict[str, str] = field(default_factory=dict)  # name -> CRI container id
    restarts: dict[str, int] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    last_exit: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    ip: str = ""
    reported: Any = None
    volume_dirs: dict[str, Path] = field(default_factory=dict)


@dataclass
class KubeletNode:
    node: str
    node_netns: str
    workdir: Path
    cni_shim: Path  # clm-cni as nodes get it: it hands each call to the node's IP-handover agent
    kubeconfig: Path
    address_range: tuple[str, str]  # first and last pod address this node hands out
    subnet: str  # the pod network, e.g. 10.215.0.0/24
    restore_binary: Path
    image_tars: list[Path]
    interval: float = 0.5
    api: client.ApiClient | None = None  # given at start(): the API runs after containerd
    containerd: ContainerdNode | None = None
    pods: dict[str, PodHere] = field(default_factory=dict)  # pod UID -> what runs here
    busy: set[str] = field(default_factory=set)
    retry_at: dict[str, float] = field(default_factory=dict)
    last_actions: Actions = field(default_factory=Actions)
    last_sync_failed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _logs: LogServer | None = None
    _cri: CriClient | None = None
    _synced: threading.Condition = field(default_factory=threading.Condition)
    _syncs: int = 0  # syncs finished
    _begun: int = 0  # syncs begun

    @property
    def socket_dir(self) -> Path:
        """The node's sockets: a short path (a state directory's may be too long for one)."""
        return SOCKETS / self.node

    @property
    def cni_socket(self) -> Path:
        """Where this node's IP-handover agent answers clm-cni."""
        return self.socket_dir / "cni.sock"

    @property
    def restore_socket(self) -> Path:
        """Where this node's checkpoint agent answers clm-runc."""
        return self.socket_dir / "restore-handler.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.workdir / "kubelet"

    def start_runtime(self) -> KubeletNode:
        """containerd with its images: before the node's agents, which talk to it."""
        self.containerd = ContainerdNode(
            name=self.node,
            netns=self.node_netns,
            workdir=self.workdir / "containerd",
            cni_plugin=[str(self.cni_shim)],
            cni={
                **routed_cni_conf(
                    node=self.node,
                    pod_cidr=self.subnet,
                    first=self.address_range[0],
                    last=self.address_range[1],
                    workdir=self.workdir,
                    kubeconfig=str(self.kubeconfig),
                ),
                "routed": {"node": self.node, "uplink": "eth0", "nodeNetns": self.node_netns},
            },
            restore_binary=self.restore_binary,
            # containerd hands its environment to the shims and CNI plugins it runs.
            env={"CLM_RESTORE_SOCKET": str(self.restore_socket), "CLM_CNI_SOCKET": str(self.cni_socket)},
            socket_dir=self.socket_dir,
        ).start()
        for tar in self.image_tars:
            self.containerd.import_image(tar)
        self._cri = self.containerd.cri()
        return self

    @property
    def _api(self) -> client.ApiClient:
        assert self.api is not None, "start(api) first"
        return self.api

    @property
    def cri(self) -> CriClient:
        assert self._cri is not None, "start_runtime() first"
        return self._cri

    def agent_env(self) -> dict[str, str]:
        """The checkpoint agent's settings for this node's containerd (as the DaemonSet's)."""
        assert self.containerd is not None
        return {
            "CLM_CONTAINERD_SOCKET": str(self.containerd.socket),
            "CLM_CONTAINERD_STATE_DIR": str(self.containerd.state),
            "CLM_CONTAINERD_RUNC_ROOT": str(self.containerd.runc_root),
            "CLM_RESTORE_HANDLER_SOCKET": str(self.restore_socket),
        }

    def start(self, api: client.ApiClient) -> KubeletNode:
        """The sync loop and the node's log endpoint (kubelet's containerLogs)."""
        self.api = api
        self._logs = LogServer(self.node, self._log_of, self._alive).start()
        core = client.CoreV1Api(api)
        core.patch_node_status(
            self.node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": self._logs.port}}}}
        )
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{self.node}", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name=f"kubelet-watch-{self.node}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._logs is not None:
            self._logs.stop()

    def remove_everything(self) -> None:
        """At sandbox shutdown: every pod, then containerd and its shims."""
        if self.containerd is not None:
            self.containerd.stop()
        if self._cri is not None:
            self._cri.close()

    # ----- the sync loop -----

    def _loop(self) -> None:
        kubelet = self._kubelet()
        while not self._stop.is_set():
            with self._synced:
                self._begun += 1
            try:
                self.sync(kubelet)
            except Exception as exc:  # - the loop goes on; the next sync retries
                log.warning("kubelet sync failed: %s", exc, extra={"node": self.node})
                with self._lock:
                    self.last_sync_failed = True
            with self._synced:
                self._syncs = self._begun
                self._synced.notify_all()
            # Woken by a change to this node's pods (as kubelet's informer is), else resynced.
            self._changed.wait(self.interval)
            self._changed.clear()

    def _watch(self) -> None:
        """The node's pods as a watch stream: each event wakes the sync loop at once."""
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(
                    client.CoreV1Api(self._api).list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                    timeout_seconds=30,
                )
                for _ in stream:
                    self._changed.set()
                    if self._stop.is_set():
                        break
            except Exception:  # - the API restarting: the loop's resync covers the gap
                self._stop.wait(self.interval)

    def _synced_since(self, count: int) -> bool:
        return self._syncs >= count

    def wait_idle(self, timeout: float = 60) -> bool:
        """Until a sync that began after this call found nothing to start or tear down and
        nothing in progress: what the API says is what runs here. False if not in `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._synced:
                # Syncs run one after another: the one after those begun so far began after now.
                if not self._synced.wait_for(
                    partial(self._synced_since, self._begun + 1), deadline - time.monotonic()
                ):
                    return False
            with self._lock:
                idle = not (self.busy or self.last_actions.start or self.last_actions.remove)
                if idle and not self.last_sync_failed:
                    return True

    def _kubelet(self) -> Kubelet:
        return Kubelet(self.cri, kubelet_dir=self.kubelet_dir, cgroup_root=f"/clm-sbx/{self.node}")

    def sync(self, kubelet: Kubelet) -> Actions:
        core = client.CoreV1Api(self._api)
        pods = [
            self._api.sanitize_for_serialization(p)
            for p in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        ]
        present = {s.labels.get(POD_UID, "") for s in self.cri.list_pod_sandboxes()} - {""}
        with self._lock:
            actions = decide(
                pods, present, set(self.busy), dict(self.retry_at), time.monotonic(), running=set(self.pods)
            )
            self.busy |= {o.uid(p) for p in actions.start} | set(actions.remove)
            self.last_actions, self.last_sync_failed = actions, False
        for pod in actions.start:
            threading.Thread(
                target=self._start_pod, args=(kubelet, pod), name=f"start-{o.name(pod)}", daemon=True
            ).start()
        for uid in actions.remove:
            threading.Thread(target=self._remove_pod, args=(uid,), name=f"remove-{uid}", daemon=True).start()
        by_uid = {o.uid(p): p for p in pods}
        with self._lock:
            here = [(uid, h) for uid, h in self.pods.items() if uid in by_uid and uid not in self.busy]
        for uid, pod_here in here:
            pod_here.pod = by_uid[uid]
            self._follow(kubelet, pod_here)
        return actions

    def _start_pod(self, kubelet: Kubelet, pod: o.Obj) -> None:
        """RunPodSandbox and each container, as kubelet's SyncPod does for a new pod. A clone's
        containers wait in CreateContainer while CLM's handler restores them."""
        uid, ns, name = o.uid(pod), o.namespace(pod), o.name(pod)
        sandbox_id = ""
        try:
            present = set(self.cri.images())
            for container in o.spec(pod).get("containers") or []:
                problem = image_problem(container.get("image", ""), present)
                if problem is not None:
                    raise ValueError(problem)
            for volume in o.spec(pod).get("volumes") or []:
                if "emptyDir" in volume:
                    kubelet.make_empty_dir(pod, volume["name"])
            volume_dirs = self._prepare_volumes(pod)
            config = sandbox_config(pod, kubelet_dir=self.kubelet_dir, cgroup_root=kubelet.cgroup_root)
            pod_log_dir(config).mkdir(parents=True, exist_ok=True)
            sandbox_id = self.cri.run_pod_sandbox(
                config, runtime_handler=o.spec(pod).get("runtimeClassName") or ""
            )
            here = PodHere(pod=pod, sandbox_id=sandbox_id, sandbox=config, volume_dirs=volume_dirs)
            here.ip = self.cri.pod_sandbox_status(sandbox_id).network.ip
            for container in o.spec(pod).get("containers") or []:
                here.containers[container["name"]] = self._create_and_start(pod, here, container, attempt=0)
        except Exception as exc:  # - reported on the pod, tried again later, as kubelet does
            message = exc.details if isinstance(exc, CriError) else str(exc)
            log.warning("pod %s/%s failed to start: %s", ns, name, message, extra={"node": self.node})
            with self._lock:  # first: whatever fails below, the pod is tried again
                self.retry_at[uid] = time.monotonic() + START_RETRY_SECONDS
                self.busy.discard(uid)
            if sandbox_id:
                # Left if this fails too (CNI DEL with the agent away): the next sync removes it.
                with contextlib.suppress(CriError):
                    self._teardown(sandbox_id)
            self._report_waiting(
                ns,
                name,
                {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": c["name"],
                            "image": c.get("image", ""),
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "waiting": {"reason": "CreateContainerError", "message": message[:500]}
                            },
                        }
                        for c in o.spec(pod).get("containers") or []
                    ],
                },
            )
            return
        with self._lock:
            self.pods[uid] = here
            self.retry_at.pop(uid, None)
            self.busy.discard(uid)
        self._report(here)
        log.info("pod started", extra={"pod": f"{ns}/{name}", "node": self.node, "ip": here.ip})

    def _prepare_volumes(self, pod: o.Obj) -> dict[str, Path]:
        """configMap and secret volumes written, as kubelet writes them, and a claim's volume
        found (PVC, then its PV): `nfs` from the sandbox's stand-in NFS server (NFS_ROOT on this
        host, which every node shares), `hostPath` as it is. Other volume types are refused."""
        core = client.CoreV1Api(self._api)
        ns, found = o.namespace(pod), dict[str, Path]()
        kubelet_pod_dir = self.kubelet_dir / "pods" / o.uid(pod) / "volumes"
        for volume in o.spec(pod).get("volumes") or []:
            name = volume["name"]
            if "configMap" in volume or "secret" in volume:
                kind = "configMap" if "configMap" in volume else "secret"
                read = core.read_namespaced_config_map if kind == "configMap" else core.read_namespaced_secret
                source = volume[kind].get("name") or volume[kind].get("secretName", "")
                try:
                    obj = self._api.sanitize_for_serialization(read(source, ns))
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    obj = None
                target = kubelet_pod_dir / f"kubernetes.io~{kind.lower()}" / name
                target.mkdir(parents=True, exist_ok=True)
                for key, data in volume_files(volume, obj).items():
                    (target / key).parent.mkdir(parents=True, exist_ok=True)
                    (target / key).write_bytes(data)
                found[name] = target
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                pvc = self._api.sanitize_for_serialization(
                    core.read_namespaced_persistent_volume_claim(claim, ns)
                )
                pv_name = o.spec(pvc).get("volumeName")
                if not pv_name:
                    raise ValueError(f"volume {name}: PVC {claim} is not bound")
                pv = o.spec(self._api.sanitize_for_serialization(core.read_persistent_volume(pv_name)))
                path: Path
                if "nfs" in pv:
                    path = NFS_ROOT / pv["nfs"]["server"] / str(pv["nfs"]["path"]).lstrip("/")
                    path.mkdir(parents=True, exist_ok=True)
                elif "hostPath" in pv:
                    path = Path(pv["hostPath"]["path"])
                else:
                    raise ValueError(
                        f"volume {name}: PV {pv_name} is neither nfs nor hostPath, which the sandbox mounts"
                    )
                found[name] = path
        return found

    def _create_and_start(self, pod: o.Obj, here: PodHere, container: dict[str, Any], *, attempt: int) -> str:
        config = container_config(
            pod, container, kubelet_dir=self.kubelet_dir, attempt=attempt, volume_dirs=here.volume_dirs
        )
        container_id = self.cri.create_container(here.sandbox_id, config, here.sandbox)
        self.cri.start_container(container_id)
        return container_id

    def _follow(self, kubelet: Kubelet, here: PodHere) -> None:
        """Exits and restarts (kubelet's PLEG and SyncPod), then the status if it changed."""
        now = time.monotonic()
        policy = o.spec(here.pod).get("restartPolicy")
        for container in o.spec(here.pod).get("containers") or []:
            cname = container["name"]
            if cname in here.outcomes:
                continue
            container_id = here.containers.get(cname)
            if container_id is None:
                continue
            if cname in here.restart_at:
                if now < here.restart_at[cname]:
                    continue
                del here.restart_at[cname]
                with contextlib.suppress(CriError):
                    self.cri.remove_container(container_id)
                here.restarts[cname] = here.restarts.get(cname, 0) + 1
                try:
                    here.containers[cname] = self._create_and_start(
                        here.pod, here, container, attempt=here.restarts[cname]
                    )
                except CriError as exc:
                    log.warning("restarting %s failed: %s", cname, exc.details, extra={"node": self.node})
                    here.restart_at[cname] = now + restart_delay(here.restarts[cname])
                continue
            status = self.cri.container_status(container_id)
            if state_name(status.state) != "exited":
                continue
            here.last_exit[cname] = status.exit_code
            verdict = after_exit(policy, status.exit_code)
            if verdict == "restart":
                here.restart_at[cname] = now + restart_delay(here.restarts.get(cname, 0))
            else:
                here.outcomes[cname] = verdict
            log.info(
                "container exited", extra={"container": cname, "code": status.exit_code, "node": self.node}
            )
        self._report(here)

    def _status(self, here: PodHere) -> dict[str, Any]:
        statuses, outcomes = [], []
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for container in o.spec(here.pod).get("containers") or []:
            cname = container["name"]
            outcome = here.outcomes.get(cname)
            outcomes.append(outcome)
            code = here.last_exit.get(cname, 0)
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
            if outcome is not None:
                state: dict[str, Any] = {"terminated": terminated}
            elif cname in here.restart_at:
                state = {"waiting": {"reason": "CrashLoopBackOff"}}
            else:
                state = {"running": {}}
            status: dict[str, Any] = {
                "name": cname,
                "image": container.get("image", ""),
                "imageID": container.get("image", ""),
                "containerID": f"containerd://{here.containers.get(cname, '')}",
                "ready": "running" in state,
                "restartCount": here.restarts.get(cname, 0),
                "started": "running" in state,
                "state": state,
            }
            if cname in here.last_exit and outcome is None:
                status["lastState"] = {"terminated": terminated}
            statuses.append(status)
        phase = pod_phase(outcomes) or "Running"
        ready = "True" if phase == "Running" and all(s["ready"] for s in statuses) else "False"
        return {
            "phase": phase,
            "podIP": here.ip,
            "podIPs": [{"ip": here.ip}] if here.ip else [],
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": now}],
            "containerStatuses": statuses,
        }

    def _report(self, here: PodHere) -> None:
        status = self._status(here)
        # Written when something changed (the times aside), as kubelet's status manager does.
        key = {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
            ],
        }
        if key == here.reported:
            return
        if here.reported is None:
            status["startTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._patch_status(o.namespace(here.pod), o.name(here.pod), status)
        here.reported = key

    def _report_waiting(self, ns: str, name: str, status: dict[str, Any]) -> None:
        """A failed start's status; the API may be away too (then the retry reports again)."""
        try:
            self._patch_status(ns, name, status)
        except Exception as exc:  # - the next attempt writes it
            log.warning("reporting %s/%s failed: %s", ns, name, exc, extra={"node": self.node})

    def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        try:
            client.CoreV1Api(self._api).patch_namespaced_pod_status(name, ns, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _remove_pod(self, uid: str) -> None:
        """The pod object is gone: its containers stopped, its sandbox (and network) removed."""
        started = time.monotonic()
        try:
            for sandbox in self.cri.list_pod_sandboxes(labels={POD_UID: uid}):
                self._teardown(sandbox.id)
            with self._lock:
                self.pods.pop(uid, None)
            log.info(
                "pod removed",
                extra={"node": self.node, "uid": uid, "seconds": round(time.monotonic() - started, 3)},
            )
        except Exception as exc:  # - the next sync tries again
            log.warning("removing pod %s failed: %s", uid, exc, extra={"node": self.node})
        finally:
            with self._lock:
                self.busy.discard(uid)

    def _teardown(self, sandbox_id: str) -> None:
        for container in self.cri.list_containers(sandbox_id=sandbox_id):
            with contextlib.suppress(CriError):
                self.cri.stop_container(container.id)
            with contextlib.suppress(CriError):
                self.cri.remove_container(container.id)
        self.cri.stop_pod_sandbox(sandbox_id)
        self.cri.remove_pod_sandbox(sandbox_id)

    # ----- what runs here, for checks -----

    def running_copies(self, namespace: str, pod: str) -> int:
        """Running containers of pods named `namespace/pod` here (a frozen one counts)."""
        labels = {POD_NAME: pod, POD_NAMESPACE: namespace}
        return sum(1 for c in self.cri.list_containers(labels) if state_name(c.state) == "running")

    def sandbox_netns(self) -> dict[str, str]:
        """Each ready sandbox's network namespace path, by pod UID."""
        found = {}
        for sandbox in self.cri.list_pod_sandboxes():
            if sandbox.state != api.SANDBOX_READY:
                continue
            with contextlib.suppress(CriError):
                path = self.cri.pod_sandbox_info(sandbox.id).get("netNamespacePath")
                if path:
                    found[sandbox.labels.get(POD_UID, sandbox.id)] = str(path)
        return found

    def leftovers(self, pod_uids: set[str]) -> list[str]:
        """What no pod in the API explains: sandboxes, clm-cni records, host-local addresses."""
        found = []
        sandboxes = self.cri.list_pod_sandboxes()
        ids = {s.id for s in sandboxes}
        found += [
            f"sandbox of pod {s.labels.get(POD_UID)} on {self.node}"
            for s in sandboxes
            if s.labels.get(POD_UID) not in pod_uids
        ]
        for record in sorted((self.workdir / "cni-state").glob("*.json")):
            if record.stem not in ids:
                found.append(f"clm-cni record {record.stem[:12]} on {self.node}")
        for allocation in sorted((self.workdir / "ipam").glob("*/*")):
            owner = allocation.read_text().split()[0] if allocation.name[0].isdigit() else None
            if owner is not None and owner not in ids:
                found.append(f"address {allocation.name} held on {self.node}")
        return found

    # ----- logs -----

    def _log_of(self, namespace: str, pod: str, container: str) -> tuple[Path, str] | None:
        with self._lock:
            found = [
                h for h in self.pods.values() if o.namespace(h.pod) == namespace and o.name(h.pod) == pod
            ]
        for here in found:
            container_id = here.containers.get(container)
            if container_id is not None:
                attempt = here.restarts.get(container, 0)
                return pod_log_dir(here.sandbox) / container / f"{attempt}.log", container_id
        return None

    def _alive(self, container_id: str) -> bool:
        try:
            return state_name(self.cri.container_status(container_id).state) == "running"
        except CriError:
            return False
