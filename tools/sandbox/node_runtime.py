"""The sandbox's stand-in for kubelet + containerd on one node — sandbox code, never part
of a deployment.

It runs the pods bound to its node as real runc containers in real network namespaces
(made by the IP-handover agent's routed backend, as the CNI plugin does on a node), with the
CRI annotations the checkpoint agent finds pods by, and reports them Running with their IP.
Clone pods (`cast.ai/restore`) are not started: the checkpoint agent restores them. A pod
whose containers are gone while a Migration holds it (frozen and dumped) is not restarted.
Containers whose pod left the node are removed, with their network.

`decide` is the whole policy, pure; `NodeRuntime` applies it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.policy import names
from clm.policy import objects as o
from clm.policy.naming import runtime_pod_uid
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent.bundle import write_bundle
from services.checkpoint_agent.runc import CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, Runc
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tools.sandbox.ipam import Ipam

log = logging.getLogger("clm.sandbox.runtime")

TERMINAL_MIGRATION = ("Finished", "Failed")
# A container is removed only once its pod has been gone this long: the coordinator deletes
# a StatefulSet pod before it creates its namesake on the destination.
REMOVE_AFTER_SECONDS = 3.0


@dataclass(frozen=True)
class Actions:
    start: tuple[o.Obj, ...] = ()
    remove: tuple[str, ...] = ()  # runtime pod UIDs


def held_by_migrations(migrations: list[o.Obj], node: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(namespace, pod) pairs that an unfinished Migration is moving, and the runtime UIDs an
    unfinished Migration is bringing to `node`."""
    moving, arriving = set(), set()
    for m in migrations:
        status = m.get("status") or {}
        if status.get("phase") in TERMINAL_MIGRATION:
            continue
        moving.add((o.namespace(m), (m.get("spec") or {}).get("podName", "")))
        if status.get("destinationNode") == node and status.get("sourcePodUID"):
            arriving.add(status["sourcePodUID"])
    return moving, arriving


def decide(
    node: str,
    pods: list[o.Obj],
    migrations: list[o.Obj],
    running: set[str],
    started: set[str],
    gone_since: dict[str, float],
    now: float,
) -> Actions:
    """`pods`: bound to `node`; `running`: runtime UIDs with containers here; `started`: UIDs
    this runtime has started before (never twice: a dumped pod is not brought back by us);
    `gone_since`: when each UID in `running` was first seen without its pod (updated here).
    `running` holds every container here, exited ones too: they are removed with their pod."""
    moving, arriving = held_by_migrations(migrations, node)
    wanted = {runtime_pod_uid(p) for p in pods}
    start = tuple(
        p
        for p in pods
        if names.RESTORE not in o.annotations(p)
        and runtime_pod_uid(p) not in running | started
        and (o.namespace(p), o.name(p)) not in moving
        and o.status(p).get("phase") not in ("Succeeded", "Failed")
        and not o.meta(p).get("deletionTimestamp")
    )
    remove = []
    for uid in sorted(running):
        if uid in wanted or uid in arriving:
            gone_since.pop(uid, None)
            continue
        first = gone_since.setdefault(uid, now)
        if now - first >= REMOVE_AFTER_SECONDS:
            remove.append(uid)
    for uid in set(gone_since) - running:
        del gone_since[uid]
    return Actions(start=start, remove=tuple(remove))


def container_args(container: dict[str, Any]) -> list[str]:
    args = [*(container.get("command") or []), *(container.get("args") or [])]
    if not args:
        raise ValueError(
            f"container {container.get('name')!r} has no command: the sandbox runs the host's programs "
            "(image 'host'), so give it a command, e.g. command: [sleep, infinity]"
        )
    return args


@dataclass
class NodeRuntime:
    node: str
    node_netns: str
    runc_root: Path
    workdir: Path
    api: client.ApiClient
    ipam: Ipam
    interval: float = 0.5
    started: set[str] = field(default_factory=set)
    ips: dict[str, str] = field(default_factory=dict)  # runtime UID -> pod IP, every pod seen here
    gone_since: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.runc = Runc(root=self.runc_root)
        self.net = RoutedBackend(node=self.node, uplink="eth0", node_netns=self.node_netns)

    def start(self) -> NodeRuntime:
        self._thread = threading.Thread(target=self._loop, name=f"runtime-{self.node}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # - the runtime keeps going; the next sync retries
                log.exception("node runtime sync failed", extra={"node": self.node})
            self._stop.wait(self.interval)

    def _running(self) -> dict[str, list[str]]:
        """Containers on this node by pod runtime UID, whatever their state."""
        by_uid: dict[str, list[str]] = {}
        for c in self.runc.list():
            uid = c.annotations.get(POD_UID)
            if uid:
                by_uid.setdefault(uid, []).append(c.id)
        return by_uid

    def sync(self) -> Actions:
        pods = [
            self.api.sanitize_for_serialization(p)
            for p in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        ]
        migrations = self.custom.list_cluster_custom_object("live.cast.ai", "v1", "migrations")["items"]
        for p in pods:
            if o.status(p).get("podIP"):
                self.ips[runtime_pod_uid(p)] = o.status(p)["podIP"]
        running = self._running()
        actions = decide(
            self.node, pods, migrations, set(running), self.started, self.gone_since, time.monotonic()
        )
        for pod in actions.start:
            self._start_pod(pod)
        for uid in actions.remove:
            self._remove(uid, running.get(uid, []))
        return actions

    def _start_pod(self, pod: o.Obj) -> None:
        uid, ns, name = runtime_pod_uid(pod), o.namespace(pod), o.name(pod)
        self.started.add(uid)
        try:
            containers = o.spec(pod).get("containers") or []
            argv = [container_args(c) for c in containers]
            ip = self.ips.get(uid) or self.ipam.allocate(uid)
            self.ips[uid] = ip
            net = PodNet(uid=uid, ip=ip)
            self.net.prepare(net)
            self.net.announce(net)
            for container, args in zip(containers, argv, strict=True):
                cname = container["name"]
                env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}
                bundle = write_bundle(
                    self.workdir / "pods" / uid / cname,
                    args=args,
                    netns=pod_netns_path(self.node, uid),
                    env=env,
                    hostname=name[:63],
                    annotations={POD_UID: uid, POD_NAME: name, POD_NAMESPACE: ns, CONTAINER_NAME: cname},
                    cgroups_path=f"/clm/{self.node}/{ns}_{name}_{cname}",
                )
                self.runc.run(f"{ns}_{name}_{cname}", bundle)
        except Exception as exc:  # - reported on the pod, as kubelet would
            log.warning("pod failed to start", extra={"pod": f"{ns}/{name}", "error": str(exc)})
            self._patch_status(
                ns, name, {"phase": "Failed", "reason": "StartError", "message": str(exc)[:500]}
            )
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._patch_status(
            ns,
            name,
            {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", "host"),
                        "imageID": "sandbox://host",
                        "containerID": f"runc://{ns}_{name}_{c['name']}",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in containers
                ],
            },
        )
        log.info("pod started", extra={"pod": f"{ns}/{name}", "node": self.node, "ip": ip})

    def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, ns, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _remove(self, uid: str, container_ids: list[str]) -> None:
        for cid in container_ids:
            self.runc.delete(cid)
        ip = self.ips.pop(uid, None)
        if ip is not None:
            self.net.release(PodNet(uid=uid, ip=ip))
        self.ipam.release(uid)
        self.gone_since.pop(uid, None)
        log.info("pod removed", extra={"node": self.node, "uid": uid})

    def remove_everything(self) -> None:
        """At sandbox shutdown: every container and pod network on this node."""
        for uid, ids in self._running().items():
            for cid in ids:
                self.runc.delete(cid)
            ip = self.ips.get(uid)
            if ip is not None:
                self.net.release(PodNet(uid=uid, ip=ip))
