"""The pre-copy move, run inside the VM (test_precopy_vm.py boots it): this machine's kernel
has no dirty-memory tracking, the VM's Debian kernel does.

Everything is the real path, as tests/integration/test_live_migration.py runs it on the
host: nats-server, both nodes' agents as processes in their network namespaces, the
stateful server in a runc container on A, a client on its own host holding one connection
and checking every answer. The move is pre-copy: rounds while the server runs and its
client keeps writing to its memory, then the final dump stacked on the last round, restored
on B. What happened goes to the console as one `CLM-RESULT {json}` line; the exit code is 0
only if the move kept the connection and the state.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from clm.contracts import MigrationStrategy
from tests.integration.agent_lab import check_client, running_lab
from tests.kit.migration import Driver
from tests.kit.nats_server import NatsServer
from tests.kit.podlab import CountingClient, running_on
from tests.kit.segment import make_segment

RESULT = "CLM-RESULT "
STEP_TIMEOUT = 600.0


async def move_with_pre_copy(state_mib: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "state_mib": state_mib}
    with (
        tempfile.TemporaryDirectory(prefix="clm-precopy-") as tmp,
        make_segment() as segment,
        NatsServer() as nats,
        # Four agents start at once on one emulated CPU: each takes a minute or more.
        running_lab(segment, nats, Path(tmp), state_mib, ready_timeout=600) as lab,
    ):
        client = CountingClient(segment.nodes["client"].name, lab.pod.ip, lab.tmp / "client")
        try:
            await asyncio.to_thread(client.wait_answers, 50, 300)
            driver = await Driver.connect(nats.url)
            try:
                # Steps take minutes, not seconds, on the VM's one emulated CPU (round 1 sends
                # 128 MiB through TLS at ~4 MB/s), more when the host is busy.
                move = dataclasses.replace(lab.move(MigrationStrategy.PRE_COPY), step_timeout=STEP_TIMEOUT)
                report = await driver.migrate(move)
            finally:
                await driver.close()
            out["error"] = report.error
            if report.ok:
                await asyncio.to_thread(client.wait_answers, 50, 300)  # and goes on, on B
            result = client.finish()
        finally:
            client.kill()
        out["strategy"] = str(report.strategy)
        out["verdict"] = report.verdict
        keys = ("pages_written", "bytes", "dump_seconds", "transfer_seconds", "frozen_seconds")
        out["rounds"] = [
            {
                "round": r.details.get("round"),
                **{k: r.details.get(k) for k in keys},
                "seconds": r.duration_seconds,
            }
            for r in report.rounds
        ]
        dump = report.result("checkpoint", "dump")
        out["final_pages"] = int(dump.details.get("pages_written", 0)) if dump else None
        out["final_dump_seconds"] = float(dump.details.get("dump_seconds", 0)) if dump else None
        out["client"] = {k: result.get(k) for k in ("answers", "in_order", "error")}
        if not report.ok:
            return out
        check_client(lab, result)
        out["on_b"] = running_on(lab.pod, lab.b.runc_root) and not running_on(lab.pod, lab.a.runc_root)
        out["ok"] = bool(out["on_b"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-mib", type=int, default=128)
    args = parser.parse_args()
    try:
        result = asyncio.run(move_with_pre_copy(args.state_mib))
    except Exception as exc:  # - everything goes to the host, which says what failed
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(RESULT + json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
