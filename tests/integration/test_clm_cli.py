"""The `clm` tool against the Kubernetes API emulator and a real NATS server: `clm explain`
says why a pod is (not) eligible and what the Evictor would do; `clm plan` prints the
planner's last published plan, and says so when there is none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from kubernetes import client

from clm.contracts import DrainPlanned, PlannedDrain, PlannedMove, encode, streams
from clm.runtime.jetstream import declare_streams
from tests.kit import builders as b
from tests.kit.nats_server import NatsServer
from tools.clm.kube_objects import object_reader
from tools.clm.main import main
from tools.kube_emulator.main import kubeconfig_text
from tools.kube_emulator.testing import api_client, running_emulator

NS = "games"


def test_explain_says_why_and_what_the_evictor_would_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_emulator() as emulator:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(emulator.url))
        core = client.CoreV1Api(api_client(emulator.url))
        core.create_namespace({"metadata": {"name": NS}})
        core.create_node(b.node("n1", migration_enabled=False))
        client.AppsV1Api(core.api_client).create_namespaced_stateful_set(
            NS,
            {
                "metadata": {"name": "mc"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "mc"}},
                    "template": {
                        "metadata": {"labels": {"app": "mc"}},
                        "spec": {"containers": [{"name": "c"}]},
                    },
                },
            },
        )
        for name, container in (
            ("mc-0", {"name": "c", "image": "mc"}),
            ("shell", {"name": "sh", "image": "busybox", "tty": True}),
        ):
            meta: dict[str, Any] = {"name": name, "labels": {"app": "mc"}}
            if name == "mc-0":
                meta["ownerReferences"] = [b.owner("StatefulSet", "mc")]
            core.create_namespaced_pod(
                NS, {"metadata": meta, "spec": {"nodeName": "n1", "containers": [container]}}
            )
            core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running"}})

        assert main(["explain", f"{NS}/shell", "--kubeconfig", str(kubeconfig)]) == 0
        out = capsys.readouterr().out
        assert "eligible for live migration: no" in out
        assert "tty: container 'sh' has tty: true" in out
        assert "Evictor, default mode: evict" in out
        assert "no working checkpoint agent there" in out

        assert main(["explain", f"{NS}/mc-0", "--kubeconfig", str(kubeconfig), "--json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        assert report["eligible"] is True and report["reasons"] == []
        assert report["workload"] == {"kind": "StatefulSet", "name": "mc", "replicas": 1}
        assert report["label_up_to_date"] is False  # no labeler ran here
        assert report["evictor"]["default"]["action"] == "evict"  # one replica, default mode
        assert report["evictor"]["aggressive"] == {
            "action": "live-migrate",
            "fallback": "evict",
            "why": report["evictor"]["aggressive"]["why"],
        }

        # Every kind explain reads comes through the client's own methods (a hand-built path
        # once left the namespace out of a DaemonSet's).
        client.AppsV1Api(core.api_client).create_namespaced_daemon_set(
            NS,
            {
                "metadata": {"name": "agent"},
                "spec": {
                    "selector": {"matchLabels": {"app": "agent"}},
                    "template": {
                        "metadata": {"labels": {"app": "agent"}},
                        "spec": {"containers": [{"name": "a"}]},
                    },
                },
            },
        )
        core.create_namespaced_pod(
            NS,
            {
                "metadata": {"name": "agent-x", "ownerReferences": [b.owner("DaemonSet", "agent")]},
                "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "agent"}]},
            },
        )
        assert main(["explain", f"{NS}/agent-x", "--kubeconfig", str(kubeconfig), "--json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        assert report["workload"]["kind"] == "DaemonSet" and report["workload"]["name"] == "agent"
        read = object_reader(core.api_client)
        daemon_set = read("DaemonSet", NS, "agent")
        assert daemon_set is not None and daemon_set["metadata"]["namespace"] == NS
        assert read("StatefulSet", NS, "mc") is not None and read("Node", "", "n1") is not None
        assert read("DaemonSet", NS, "missing") is None

        assert main(["explain", f"{NS}/nope", "--kubeconfig", str(kubeconfig)]) == 1
        assert f"no pod {NS}/nope" in capsys.readouterr().err
        assert main(["explain", "nope", "--kubeconfig", str(kubeconfig)]) == 2
        assert "NAMESPACE/POD" in capsys.readouterr().err


def test_plan_prints_the_last_published_plan(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup(plan: DrainPlanned | None) -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await declare_streams(js, streams.ALL, replicas=1)
        if plan is not None:
            await js.publish(plan.subject(), encode(plan))
        await nc.close()

    asyncio.run(setup(None))
    assert main(["plan", "--nats", nats_server.url]) == 1
    assert "no plan published yet" in capsys.readouterr().err

    older = DrainPlanned(mode="default", dry_run=False, nodes=3, pods=9)
    newer = DrainPlanned(
        mode="aggressive",
        dry_run=True,
        nodes=3,
        pods=9,
        nodes_the_plan_would_drain=1,
        new_drains=[
            PlannedDrain(
                node="n3",
                why="bin-packing",
                saving_per_hour=0.2,
                moves=[
                    PlannedMove(
                        namespace=NS, pod="mc-0", action="live-migrate", destination="n1", why="eligible"
                    )
                ],
            )
        ],
    )
    asyncio.run(setup(older))
    asyncio.run(setup(newer))
    assert main(["plan", "--nats", nats_server.url]) == 0
    out = capsys.readouterr().out
    assert "aggressive mode, dry run" in out
    assert "drain n3 (bin-packing" in out and "live-migrate" in out and f"{NS}/mc-0 -> n1" in out

    assert main(["plan", "--nats", "nats://127.0.0.1:1"]) == 1
    assert "cannot read the plan from NATS" in capsys.readouterr().err
