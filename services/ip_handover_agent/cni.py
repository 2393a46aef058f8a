"""clm-cni: the CNI plugin that gives a restored pod the IP of the pod it restores.

Configured in place of the node's primary plugin, which it wraps (`delegate`), or chained
after it in a conflist (then it sees the primary's `prevResult`):

    {"cniVersion": "1.0.0", "name": "pods", "type": "clm-cni",
     "kubeconfig": "/etc/cni/net.d/clm.kubeconfig",
     "delegate": {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", ...}}}

ADD for a pod without the `cast.ai/restore` annotation: the primary plugin runs exactly as
it would alone (same environment, its own configuration on stdin) and its result is
returned untouched (chained: `prevResult` is returned untouched). ADD for a pod annotated
`cast.ai/restore: <namespace>/<pod>`: the source pod's IP (its `status.podIP`) is put in
the pod's network namespace the routed way (veth, IP/32, default route via the link-local
gateway), not yet announced — the IP-handover agent's commit makes it reachable. DEL and
CHECK follow what ADD did (a record per container under `state_dir`). VERSION lists the
spec versions. Errors are CNI error objects on stdout with a non-zero exit status.

Routed main-plugin mode (`"routed": {"node": NAME, "uplink": IFACE}` with an `"ipam"`
section, no delegate), for nodes whose network routes pod IPs (the sandbox): a pod gets
the address its IPAM plugin (e.g. the reference `static` or `host-local`) hands out, wired
the way the IP-handover agent's routed backend wires and moves pods — veth, IP/32, a /32
route on the node, proxy ARP and a gratuitous ARP on the uplink — so its IP can later move.
The pod's namespace is wherever the runtime made it (containerd: /var/run/netns/cni-…; the
sandbox's runtime: the routed backend's name); the node side is named by the pod's UID
(`CNI_ARGS` must carry `K8S_POD_UID`), which is how the IP moves later.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from clm.contracts.protocol import StepFailed
from services.ip_handover_agent.routed import PodNet, RoutedBackend

RESTORE_ANNOTATION = "cast.ai/restore"
RESTORE_POD_IP_ANNOTATION = "live.cast.ai/restore-pod-ip"
RUNTIME_POD_UID_ANNOTATION = "live.cast.ai/runtime-pod-uid"
GATEWAY = "169.254.1.1"
SUPPORTED = ["0.4.0", "1.0.0", "1.1.0"]
STATE_DIR = Path("/var/lib/cni/clm")

# CNI error codes (spec): 4 invalid network config, 7 invalid environment variables,
# 11 try again later; 100+ are the plugin's own.
ERR_CONFIG, ERR_ENV, ERR_TRY_LATER, ERR_RESTORE = 4, 7, 11, 100


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K1=V1;K2=V2` (Kubernetes passes K8S_POD_NAMESPACE, K8S_POD_NAME, ...)."""
    out = {}
    for part in raw.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def host_veth(source_pod_uid: str) -> str:
    """The node side of a restored pod's veth: the name the routed backend uses for the
    pod being restored, so the IP-handover agent's commit finds it."""
    return "clm" + hashlib.sha256(source_pod_uid.encode()).hexdigest()[:10]


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *args] if netns is None else ["nsenter", f"--net={netns}", "ip", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CniError(ERR_RESTORE, f"{' '.join(argv)} failed", proc.stderr.strip())
    return proc.stdout


class KubeLookup:
    """The two reads the plugin needs from the API: the pod's annotations and the source
    pod's IP. Uses the official client with the kubeconfig named in the configuration."""

    def __init__(self, kubeconfig: str | None = None, *, api: Any = None) -> None:
        """From the kubeconfig the configuration names, or (the agent serving the node's
        clm-cni shim) the agent's own API client."""
        from kubernetes import client, config

        if api is None:
            api = config.new_client_from_config(config_file=kubeconfig)
        self.api = client.CoreV1Api(api)

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        pod = self.api.read_namespaced_pod(name, namespace)
        return dict(pod.metadata.annotations or {})

    def pod_ip_and_uid(self, namespace: str, name: str) -> tuple[str | None, str]:
        pod = self.api.read_namespaced_pod(name, namespace)
        return (pod.status.pod_ip if pod.status else None), pod.metadata.uid


class Plugin:
    def __init__(self, env: dict[str, str], conf: dict[str, Any], lookup: KubeLookup | None = None) -> None:
        self.env, self.conf = env, conf
        self.version = str(conf.get("cniVersion", "1.0.0"))
        self.state_dir = Path(conf.get("stateDir", STATE_DIR))
        self._lookup = lookup
        self._own: dict[str, str] = {}  # the pod's annotations, once read
        # The sandbox's nodes are network namespaces: the node side of a pod's wiring goes
        # there, while the plugin itself runs where it can reach the API (the host).
        self.node_netns: str | None = (conf.get("routed") or {}).get("nodeNetns")

    def _host(self, *args: str) -> str:
        return _ip(*args, netns=f"/var/run/netns/{self.node_netns}" if self.node_netns else None)

    def _host_link_exists(self, name: str) -> bool:
        ns = ["-n", self.node_netns] if self.node_netns else []
        return (
            subprocess.run(["ip", *ns, "link", "show", name], capture_output=True, check=False).returncode
            == 0
        )

    def lookup(self) -> KubeLookup:
        if self._lookup is None:
            kubeconfig = self.conf.get("kubeconfig")
            if not kubeconfig:
                raise CniError(
                    ERR_CONFIG, 'clm-cni needs "kubeconfig" in its configuration to read pod annotations'
                )
            self._lookup = KubeLookup(str(kubeconfig))
        return self._lookup

    def need(self, name: str) -> str:
        value = self.env.get(name)
        if not value:
            raise CniError(
                ERR_ENV, f"environment variable {name} is required for {self.env.get('CNI_COMMAND')}"
            )
        return value

    def record_path(self) -> Path:
        return self.state_dir / f"{self.need('CNI_CONTAINERID')}.json"

    # ----- commands -----

    def run(self) -> dict[str, Any] | None:
        command = self.env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return {"cniVersion": self.version, "supportedVersions": SUPPORTED}
        if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
            raise CniError(ERR_ENV, f"unknown CNI_COMMAND {command!r}: expected ADD, DEL, CHECK or VERSION")
        if command in ("GC", "STATUS"):
            return self.delegate() if "delegate" in self.conf else None
        if command == "ADD":
            source = self.restore_source()
            if source is not None:
                return self.add_restored(source)
            return self.add_routed() if "routed" in self.conf else self.delegate()
        record = self.record_path()
        if record.exists():
            routed = json.loads(record.read_text()).get("kind") == "routed"
            if command == "DEL":
                (self.del_routed if routed else self.del_restored)(record)
            else:
                self.check_restored(record)
            return None
        if "routed" in self.conf:
            return None  # DEL of what was never added (or already deleted): done
        return self.delegate()

    def restore_source(self) -> str | None:
        args = cni_args(self.env.get("CNI_ARGS", ""))
        namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
        if not namespace or not name:
            return None  # not a Kubernetes pod: nothing to restore
        try:
            self._own = self.lookup().annotations(namespace, name)
            return self._own.get(RESTORE_ANNOTATION)
        except CniError:
            raise
        except Exception as exc:  # - any API failure: the runtime retries ADD
            raise CniError(
                ERR_TRY_LATER, f"cannot read pod {namespace}/{name} from the API", str(exc)
            ) from None

    def delegate(self) -> dict[str, Any] | None:
        """The primary plugin, run as the runtime would run it; or, chained, prevResult."""
        if "delegate" not in self.conf:
            if "prevResult" in self.conf:
                return dict(self.conf["prevResult"])
            raise CniError(ERR_CONFIG, 'clm-cni needs a "delegate" primary plugin or to be chained after one')
        delegate = {"cniVersion": self.version, "name": self.conf.get("name", "clm"), **self.conf["delegate"]}
        if "prevResult" in self.conf:  # CHECK and DEL carry the result of ADD
            delegate["prevResult"] = self.conf["prevResult"]
        return self._exec(str(delegate.get("type", "")), delegate, self.env)

    def _exec(self, plugin_type: str, delegate: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
        """Another plugin (a primary or an IPAM plugin), run per the spec: found in CNI_PATH,
        the same environment, its configuration on stdin, its result or error on stdout."""
        binary = next(
            (
                Path(d, plugin_type)
                for d in self.env.get("CNI_PATH", "").split(":")
                if d and Path(d, plugin_type).is_file()
            ),
            None,
        )
        if binary is None:
            raise CniError(
                ERR_CONFIG, f"primary plugin {plugin_type!r} not found in CNI_PATH={self.env.get('CNI_PATH')}"
            )
        proc = subprocess.run(
            [str(binary)],
            input=json.dumps(delegate),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            try:
                error = json.loads(proc.stdout)
            except json.JSONDecodeError:
                error = {"code": ERR_RESTORE, "msg": f"{plugin_type} failed", "details": proc.stderr.strip()}
            raise CniError(
                int(error.get("code", ERR_RESTORE)), str(error.get("msg")), str(error.get("details", ""))
            )
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def add_restored(self, source: str) -> dict[str, Any]:
        netns, ifname = self.need("CNI_NETNS"), self.need("CNI_IFNAME")
        if "/" not in source:
            raise CniError(
                ERR_RESTORE, f"annotation {RESTORE_ANNOTATION}={source!r} is not <namespace>/<pod>"
            )
        namespace, name = source.split("/", 1)
        own = self._own
        # The clone carries the source's IP and runtime UID: a StatefulSet pod's namesake is
        # created after the source object is gone (its name now reads the namesake itself).
        ip, source_uid = own.get(RESTORE_POD_IP_ANNOTATION), own.get(RUNTIME_POD_UID_ANNOTATION)
        if not ip or not source_uid:
            try:
                ip, source_uid = self.lookup().pod_ip_and_uid(namespace, name)
            except Exception as exc:  # - any API failure: the runtime retries ADD
                raise CniError(
                    ERR_TRY_LATER, f"cannot read the restored pod {source} from the API", str(exc)
                ) from None
        if not ip:
            raise CniError(ERR_RESTORE, f"pod {source} has no IP to restore (status.podIP is empty)")
        veth = host_veth(source_uid)
        result = self._wire(ip, veth, netns, ifname)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.record_path().write_text(
            json.dumps(
                {
                    "ip": ip,
                    "veth": veth,
                    "ifname": ifname,
                    "netns": netns,
                    "restores": source,
                    "source_uid": source_uid,
                }
            )
        )
        return result

    def _wire(self, ip: str, veth: str, netns: str, ifname: str) -> dict[str, Any]:
        """The pod's side of the routed model: veth, IP/32, default route via the link-local
        gateway answered by the node side of the veth. Returns the CNI result."""
        if self._host_link_exists(veth):  # left by an earlier ADD of this pod that did not finish
            self._host("link", "del", veth)
        self._host("link", "add", veth, "type", "veth", "peer", "name", ifname, "netns", netns)
        self._host("link", "set", veth, "up")
        _ip("addr", "add", f"{ip}/32", "dev", ifname, netns=netns)
        _ip("link", "set", ifname, "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("route", "replace", GATEWAY, "dev", ifname, "scope", "link", netns=netns)
        _ip("route", "replace", "default", "via", GATEWAY, "dev", ifname, netns=netns)
        host_mac = self._host("-br", "link", "show", veth).split()[2]
        _ip("neigh", "replace", GATEWAY, "lladdr", host_mac, "dev", ifname, "nud", "permanent", netns=netns)
        pod_mac = _ip("-br", "link", "show", ifname, netns=netns).split()[2]
        return {
            "cniVersion": self.version,
            "interfaces": [
                {"name": veth, "mac": host_mac},
                {"name": ifname, "mac": pod_mac, "sandbox": netns},
            ],
            "ips": [{"address": f"{ip}/32", "gateway": GATEWAY, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
            "dns": {},
        }

    def add_routed(self) -> dict[str, Any]:
        netns, ifname = self.need("CNI_NETNS"), self.need("CNI_IFNAME")
        routed = self.conf["routed"]
        if "ipam" not in self.conf:
            raise CniError(ERR_CONFIG, 'clm-cni in routed mode needs an "ipam" section (e.g. host-local)')
        uid = cni_args(self.env.get("CNI_ARGS", "")).get("K8S_POD_UID")
        if not uid:
            raise CniError(ERR_ENV, "clm-cni in routed mode needs K8S_POD_UID in CNI_ARGS")
        backend = RoutedBackend(
            node=str(routed["node"]), uplink=str(routed.get("uplink", "eth0")), node_netns=self.node_netns
        )
        ipam = self.conf["ipam"]
        allocated = self._exec(str(ipam.get("type", "")), {**self.conf, "ipam": ipam}, self.env) or {}
        ips = [
            str(a["address"]).split("/")[0] for a in allocated.get("ips", []) if ":" not in str(a["address"])
        ]
        if not ips:
            raise CniError(ERR_CONFIG, f"the IPAM plugin {ipam.get('type')!r} returned no IPv4 address")
        ip = ips[0]
        try:
            result = self._wire(ip, host_veth(uid), netns, ifname)
            backend.announce(PodNet(uid=uid, ip=ip))
        except (CniError, StepFailed) as exc:
            self._exec(
                str(ipam.get("type", "")), {**self.conf, "ipam": ipam}, {**self.env, "CNI_COMMAND": "DEL"}
            )
            if self._host_link_exists(host_veth(uid)):
                self._host("link", "del", host_veth(uid))
            raise CniError(ERR_RESTORE, f"wiring pod {uid} with {ip} failed", str(exc)) from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.record_path().write_text(
            json.dumps(
                {
                    "kind": "routed",
                    "ip": ip,
                    "veth": host_veth(uid),
                    "ifname": ifname,
                    "netns": netns,
                    "uid": uid,
                }
            )
        )
        return result

    def del_routed(self, record_path: Path) -> None:
        record = json.loads(record_path.read_text())
        routed = self.conf.get("routed") or {}
        backend = RoutedBackend(
            node=str(routed.get("node", "")),
            uplink=str(routed.get("uplink", "eth0")),
            node_netns=self.node_netns,
        )
        backend.withdraw(PodNet(uid=record["uid"], ip=record["ip"]))
        if self._host_link_exists(record["veth"]):
            self._host("link", "del", record["veth"])
        if "ipam" in self.conf:
            self._exec(str(self.conf["ipam"].get("type", "")), self.conf, {**self.env, "CNI_COMMAND": "DEL"})
        record_path.unlink(missing_ok=True)

    def del_restored(self, record_path: Path) -> None:
        record = json.loads(record_path.read_text())
        if self._host_link_exists(record["veth"]):
            self._host("link", "del", record["veth"])
        record_path.unlink(missing_ok=True)

    def check_restored(self, record_path: Path) -> None:
        record = json.loads(record_path.read_text())
        if not self._host_link_exists(record["veth"]):
            raise CniError(ERR_RESTORE, f"the pod's veth {record['veth']} is missing")
        addresses = _ip("-br", "addr", "show", record["ifname"], netns=record["netns"])
        if f"{record['ip']}/32" not in addresses:
            raise CniError(ERR_RESTORE, f"{record['ifname']} does not hold {record['ip']}/32")


def execute(raw: str, env: dict[str, str], lookup: KubeLookup | None = None) -> tuple[int, str]:
    """One CNI call: the exit status and what goes to stdout (the result, or a CNI error)."""
    version = "1.0.0"
    try:
        if env.get("CNI_COMMAND") == "VERSION" and not raw.strip():
            conf: dict[str, Any] = {}
        else:
            try:
                conf = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CniError(ERR_CONFIG, f"the network configuration on stdin is not JSON: {exc}") from None
        version = str(conf.get("cniVersion", version))
        result = Plugin(env, conf, lookup).run()
    except CniError as exc:
        return 1, json.dumps(
            {"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}
        )
    return 0, json.dumps(result) if result is not None else ""


def main(stdin: str | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    raw = sys.stdin.read() if stdin is None else stdin
    code, out = execute(raw, env)
    if out:
        print(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
