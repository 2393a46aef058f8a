"""The README's main job (until the sandbox exists): start NATS JetStream and the five CLM
services locally, show that every one is healthy, then print CLM's NATS traffic live until
Ctrl-C. With --check it stops right after the health table (exit 1 if anything is unhealthy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import nats

from clm.contracts import ContractError, decode
from tools.console.report import emit
from tools.local_cluster.cluster import LocalCluster


async def follow(url: str, stop: asyncio.Event) -> None:
    nc = await nats.connect(url)

    async def show(msg) -> None:
        try:
            kind = decode(msg.data).kind
        except ContractError as exc:
            kind = f"(not a CLM message: {exc})"
        print(f"  {msg.subject}  {kind}", flush=True)

    await nc.subscribe("clm.>", cb=show)
    print(f"\nfollowing clm.> on {url} (Ctrl-C to stop)", flush=True)
    await stop.wait()
    await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/run", description=__doc__)
    parser.add_argument("--pex-dir", type=Path, default=Path("dist"))
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/clm-local"))
    parser.add_argument(
        "--nodes",
        default="node-a,node-b,node-c",
        help="comma-separated node names; each gets both node agents",
    )
    parser.add_argument("--nats-port", type=int, default=None, help="NATS port (default: a free one)")
    parser.add_argument("--check", action="store_true", help="exit after showing health")
    args = parser.parse_args(argv)

    cluster = LocalCluster(
        pex_dir=args.pex_dir,
        state_dir=args.state_dir,
        nodes=[n for n in args.nodes.split(",") if n],
        nats_port=args.nats_port,
    )
    try:
        cluster.start()
    except FileNotFoundError as exc:
        print(f"tools/run: {exc}", file=sys.stderr)
        return 2
    try:
        healthy = cluster.wait_ready()
        assert cluster.nats is not None
        print(f"NATS JetStream: {cluster.nats.url} (store {cluster.nats.store_dir})")
        if cluster.kube is not None:
            print(
                f"Kubernetes API (emulator): {cluster.kube.url}  "
                f"(KUBECONFIG={cluster.kubeconfig} kubectl get migrations -A)"
            )
        emit("CLM services", cluster.status_rows(), as_json=False)
        print(f"\nlogs: {args.state_dir / 'logs'}")
        if not healthy:
            print("\nsome services are not healthy: see their logs above", file=sys.stderr)
            return 1
        print("\nall services are healthy")
        if not args.check:
            stop = asyncio.Event()

            async def run() -> None:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                assert cluster.nats is not None  # started above
                await follow(cluster.nats.url, stop)

            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(run())
        return 0
    finally:
        codes = cluster.stop()
        bad = [f"{name} exited {code}" for name, code in codes if code != 0]
        print("stopped: " + ("; ".join(bad) if bad else "every service exited cleanly"))


if __name__ == "__main__":
    sys.exit(main())
