"""The sandbox's stand-in for kubelet + containerd on one node — sandbox code, never part
of a deployment.

It runs the pods bound to its node as real runc containers in real network namespaces,
wired the way a container runtime wires them: it creates the pod's namespace and runs the
CNI plugin chain in the node's namespace per the CNI spec — clm-cni in its routed mode with
the reference `static` IPAM plugin (containernetworking-plugins) handing out the address
the sandbox picked — with the CRI annotations the checkpoint agent finds pods by, and
reports them Running with their IP.
Clone pods (`cast.ai/restore`) are not started: the checkpoint agent restores them. A pod
whose containers are gone while a Migration holds it (frozen and dumped) is not restarted.
Containers whose pod left the node are removed, with their network.

`decide` is the whole policy, pure; `NodeRuntime` applies it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clm.contracts import protocol
from clm.contracts.protocol import is_terminal
from clm.policy import names
from clm.policy import objects as o
from clm.policy.naming import runtime_pod_uid
from clm.runtime.podnet import pod_netns_path
from services.checkpoint_agent.bundle import write_bundle
from services.checkpoint_agent.container_log import log_path
from services.checkpoint_agent.runc import Runc
from services.checkpoint_agent.runtime import CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, Container
from services.ip_handover_agent.routed import PodNet, RoutedBackend
from tools.sandbox.ipam import Ipam
from tools.sandbox.lifecycle import after_exit, become_subreaper, exit_code, pod_phase, restart_delay
from tools.sandbox.log_server import LogServer

log = logging.getLogger("clm.sandbox.runtime")

# A container is removed only once its pod has been gone this long: the coordinator deletes
# a StatefulSet pod before it creates its namesake on the destination.
REMOVE_AFTER_SECONDS = 3.0
# Debian's containernetworking-plugins.
REFERENCE_PLUGINS = "/usr/lib/cni"


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
        if is_terminal(status.get("phase")):
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
    # The clm-cni plugin as a command (its PEX, or the module) and the kubeconfig it reads
    # pods with; None wires pods directly with the routed backend (no CNI).
    cni_plugin: list[str] | None = None
    kubeconfig: Path | None = None
    interval: float = 0.5
    # Containers' output, one CRI log file per container id (the checkpoint agent of this
    # node writes restored containers' there too); served like kubelet's containerLogs.
    container_logs: Path | None = None
    started: set[str] = field(default_factory=set)
    ips: dict[str, str] = field(default_factory=dict)  # runtime UID -> pod IP, every pod seen here
    gone_since: dict[str, float] = field(default_factory=dict)
    cni_pods: set[str] = field(default_factory=set)  # runtime UIDs wired through CNI
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _logs: LogServer | None = None
    # Exits and restarts, per (runtime pod UID, container name).
    # container id -> (host pid, its slot) while it runs
    pids: dict[str, tuple[int, tuple[str, str]]] = field(default_factory=dict)
    exits: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)  # (container id, code)
    restarts: dict[tuple[str, str], int] = field(default_factory=dict)
    restart_at: dict[tuple[str, str], float] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)  # Succeeded or Failed

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.runc = Runc(root=self.runc_root)
        self.net = RoutedBackend(node=self.node, uplink="eth0", node_netns=self.node_netns)

    def start(self) -> NodeRuntime:
        become_subreaper()  # the containers' exit codes come to this process
        if self.container_logs is not None:
            self._logs = LogServer(self.node, self._log_of, self._alive).start()
            # As kubelet reports it; the API emulator reaches it on loopback.
            self.core.patch_node_status(
                self.node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": self._logs.port}}}}
            )
        self._thread = threading.Thread(target=self._loop, name=f"runtime-{self.node}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._logs is not None:
            self._logs.stop()

    def _log_of(self, namespace: str, pod: str, container: str) -> tuple[Path, str] | None:
        assert self.container_logs is not None
        try:
            obj = self.api.sanitize_for_serialization(self.core.read_namespaced_pod(pod, namespace))
        except ApiException:
            return None
        uid = runtime_pod_uid(obj)
        for c in self.runc.containers():
            if c.annotations.get(POD_UID) == uid and c.annotations.get(CONTAINER_NAME) == container:
                return log_path(self.container_logs, c.id), c.id
        return None

    def _alive(self, container_id: str) -> bool:
        return self.runc.state(container_id) in ("running", "paused")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # - the runtime keeps going; the next sync retries
                if refused(exc):  # the API restarting: one line, as kubelet logs it
                    log.warning("node runtime cannot reach the API: %s", exc, extra={"node": self.node})
                else:
                    log.exception("node runtime sync failed", extra={"node": self.node})
            self._stop.wait(self.interval)

    def _running(self, containers: list[Container] | None = None) -> dict[str, list[str]]:
        """Containers on this node by pod runtime UID, whatever their state."""
        by_uid: dict[str, list[str]] = {}
        for c in self.runc.containers() if containers is None else containers:
            uid = c.annotations.get(POD_UID)
            if uid:
                by_uid.setdefault(uid, []).append(c.id)
        return by_uid

    def sync(self) -> Actions:
        pods = [
            self.api.sanitize_for_serialization(p)
            for p in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        ]
        migrations = self.custom.list_cluster_custom_object(*protocol.CRD)["items"]
        for p in pods:
            if o.status(p).get("podIP"):
                self.ips[runtime_pod_uid(p)] = o.status(p)["podIP"]
        containers = self.runc.containers()
        self._watch_exits(pods, migrations, containers)
        running = self._running(containers)  # a restart keeps its pod's runtime UID
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
            if self.cni_plugin is not None:
                self._cni("ADD", pod, uid, ip)
            else:
                self.net.prepare(net)
                self.net.announce(net)
            for container, args in zip(containers, argv, strict=True):
                self._run_container(pod, container, args)
        except Exception as exc:  # - reported on the pod, as kubelet would
            log.warning("pod %s/%s failed to start: %s", ns, name, exc)
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

    def _run_container(self, pod: o.Obj, container: dict[str, Any], args: list[str]) -> str:
        uid, ns, name, cname = runtime_pod_uid(pod), o.namespace(pod), o.name(pod), container["name"]
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
        cid = f"{ns}_{name}_{cname}"
        output = log_path(self.container_logs, cid) if self.container_logs is not None else None
        pid_file = bundle / "init.pid"
        self.runc.run(cid, bundle, output=output, pid_file=pid_file)
        # Known at once: a container that exits before the next sync is still reaped.
        self.pids[cid] = (int(pid_file.read_text()), (uid, cname))
        return cid

    # ----- containers that exit -----

    def _watch_exits(self, pods: list[o.Obj], migrations: list[o.Obj], containers: list[Container]) -> None:
        """Collect exit codes (we are the containers' subreaper), then restart or finish as
        the pod's restartPolicy says. A pod that any Migration names is left alone: CRIU
        ends a dumped container with SIGKILL, and restarting it would run the pod twice."""
        moved = {(o.namespace(m), (m.get("spec") or {}).get("podName", "")) for m in migrations}
        here = {runtime_pod_uid(p): p for p in pods}
        for c in containers:
            if c.pid and c.annotations.get(POD_UID) and c.annotations.get(CONTAINER_NAME):
                self.pids[c.id] = (c.pid, (c.annotations[POD_UID], c.annotations[CONTAINER_NAME]))
        now = time.monotonic()
        changed: set[str] = set()
        for cid, (pid, slot) in list(self.pids.items()):
            code = exit_code(pid)
            if code is None:
                continue
            del self.pids[cid]
            pod = here.get(slot[0])
            if pod is None or (o.namespace(pod), o.name(pod)) in moved:
                continue
            self.exits[slot] = (cid, code)
            verdict = after_exit(o.spec(pod).get("restartPolicy"), code)
            if verdict == "restart":
                self.restart_at[slot] = now + restart_delay(self.restarts.get(slot, 0))
            else:
                self.outcomes[slot] = verdict
            changed.add(slot[0])
            log.info("container exited", extra={"container": cid, "code": code, "node": self.node})
        for slot, at in list(self.restart_at.items()):
            pod = here.get(slot[0])
            if pod is None or (o.namespace(pod), o.name(pod)) in moved:
                del self.restart_at[slot]
                continue
            if now < at:
                continue
            del self.restart_at[slot]
            container = next((c for c in o.spec(pod).get("containers") or [] if c["name"] == slot[1]), None)
            if container is None:
                continue
            self.runc.delete(self.exits[slot][0])
            try:
                self._run_container(pod, container, container_args(container))
            except Exception as exc:  # - the next exit check or the pod's deletion decides
                log.warning("restarting %s failed: %s", slot, exc)
            self.restarts[slot] = self.restarts.get(slot, 0) + 1
            changed.add(slot[0])
        for uid in changed:
            if uid in here:
                self._report(here[uid])

    def _report(self, pod: o.Obj) -> None:
        """The pod's container statuses and phase after exits and restarts."""
        uid = runtime_pod_uid(pod)
        statuses, outcomes = [], []
        for c in o.spec(pod).get("containers") or []:
            slot = (uid, c["name"])
            outcome = self.outcomes.get(slot)
            outcomes.append(outcome)
            code = self.exits.get(slot, ("", 0))[1]
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
            if outcome is not None:
                state: dict[str, Any] = {"terminated": terminated}
            elif slot in self.restart_at:
                state = {"waiting": {"reason": "CrashLoopBackOff"}}
            else:
                state = {"running": {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
            status: dict[str, Any] = {
                "name": c["name"],
                "image": c.get("image", "host"),
                "imageID": "sandbox://host",
                "ready": "running" in state,
                "restartCount": self.restarts.get(slot, 0),
                "started": "running" in state,
                "state": state,
            }
            if slot in self.exits and outcome is None:
                status["lastState"] = {"terminated": terminated}
            statuses.append(status)
        phase = pod_phase(outcomes) or "Running"
        self._patch_status(o.namespace(pod), o.name(pod), {"phase": phase, "containerStatuses": statuses})

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
        self._release_network(uid, ip)
        self.ipam.release(uid)
        self.gone_since.pop(uid, None)
        log.info("pod removed", extra={"node": self.node, "uid": uid})

    def remove_everything(self) -> None:
        """At sandbox shutdown: every container and pod network on this node."""
        for uid, ids in self._running().items():
            for cid in ids:
                self.runc.delete(cid)
            self._release_network(uid, self.ips.get(uid))

    # ----- pod networks -----

    def _release_network(self, uid: str, ip: str | None) -> None:
        if uid in self.cni_pods:
            self._cni("DEL", None, uid, ip)
            self.cni_pods.discard(uid)
            # The runtime owns the namespace it made (a pod that moved away has none left).
            netns = pod_netns_path(self.node, uid)
            if netns.exists():
                subprocess.run(["ip", "netns", "del", netns.name], capture_output=True, check=False)
        elif ip is not None:  # a clone the checkpoint agent restored: wired by the handover agent
            self.net.release(PodNet(uid=uid, ip=ip))

    def _cni(self, command: str, pod: o.Obj | None, uid: str, ip: str | None) -> None:
        """Run the CNI chain as a container runtime does: plugin found in CNI_PATH, the
        CNI_* environment, the network configuration on stdin. It runs in the host's network
        namespace, where the API is, and wires the node's side in the node's namespace."""
        assert self.cni_plugin is not None
        netns = pod_netns_path(self.node, uid)
        if command == "ADD" and not netns.exists():
            subprocess.run(["ip", "netns", "add", netns.name], capture_output=True, check=True)
        bin_dir = self._cni_bin()
        args = f"IgnoreUnknown=1;K8S_POD_UID={uid}"  # as kubelet: reference plugins refuse unknown args
        if pod is not None:
            args = f"{args};K8S_POD_NAMESPACE={o.namespace(pod)};K8S_POD_NAME={o.name(pod)}"
        conf = {
            "cniVersion": "1.0.0",
            "name": "clm-sandbox",
            "type": "clm-cni",
            "routed": {"node": self.node, "uplink": "eth0", "nodeNetns": self.node_netns},
            "ipam": {"type": "static", "addresses": [{"address": f"{ip}/32"}]} if ip else {"type": "static"},
            "stateDir": str(self.workdir / "cni-state"),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig else "",
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": uid,
            "CNI_NETNS": str(netns),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(bin_dir),
            "CNI_ARGS": args,
        }
        proc = subprocess.run(
            [str(bin_dir / "clm-cni")],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"CNI {command} for pod {uid} failed: {proc.stdout.strip()} {proc.stderr.strip()[-500:]}"
            )
        if command == "ADD":
            self.cni_pods.add(uid)

    def _cni_bin(self) -> Path:
        """CNI_PATH for this node: clm-cni (this sandbox's build of it) and the reference
        plugins from containernetworking-plugins."""
        assert self.cni_plugin is not None
        bin_dir = self.workdir / "cni-bin"
        plugin = bin_dir / "clm-cni"
        if not plugin.exists():
            bin_dir.mkdir(parents=True, exist_ok=True)
            plugin.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in self.cni_plugin) + "\n")
            plugin.chmod(0o755)
            for reference in ("static", "host-local", "loopback"):
                target = Path(REFERENCE_PLUGINS) / reference
                if target.exists():
                    (bin_dir / reference).symlink_to(target)
        return bin_dir


def refused(exc: BaseException | None) -> bool:
    """A connection the API refused or dropped, at the root of the client's exception chain."""
    while exc is not None:
        if isinstance(exc, ConnectionError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
