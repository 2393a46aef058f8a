"""tools/bench precopy, inside the VM (tools/benchmarks/precopy.py boots it): the moves of
`tools/bench migrate` with a writer dirtying the server's memory, stop-and-copy and pre-copy
side by side for each size and dirty rate, one `CLM-ROW {json}` line each as it is measured."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

from tests.kit.nats_server import NatsServer
from tests.kit.segment import make_segment
from tools.benchmarks import predump_mode
from tools.benchmarks.migrate import Bench

ROW = "CLM-ROW "
PATHS = ("stop-and-copy", "pre-copy")


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,1024", help="state sizes in MiB")
    parser.add_argument(
        "--rates",
        default="1,10,50",
        help="dirtied per second, % of the state; with an h (1h): a hot set rewritten, not a sweep",
    )
    parser.add_argument("--mode-sizes", default="", help="sizes (MiB) to compare CRIU's pre-dump modes at")
    args = parser.parse_args()
    failed = False
    if args.mode_sizes:
        try:
            for row in predump_mode.compare([int(s) for s in _numbers(args.mode_sizes)]):
                print(ROW + json.dumps({"kind": "pre-dump-mode", **row}), flush=True)
        except Exception as exc:  # - the row says what failed; the moves go on
            failed = True
            print(
                ROW + json.dumps({"kind": "pre-dump-mode", "error": f"{type(exc).__name__}: {exc}"}),
                flush=True,
            )
            print(traceback.format_exc(), file=sys.stderr, flush=True)
    with (
        make_segment() as segment,
        NatsServer() as nats,
        tempfile.TemporaryDirectory(prefix="clm-bench-precopy-") as tmp,
    ):
        bench = Bench(segment, nats, Path(tmp))
        try:
            bench.start(ready_timeout=600)  # four agents starting on one emulated CPU
            for size in _numbers(args.sizes):
                for case in args.rates.split(","):
                    rate, pattern = float(case.rstrip("h")), "hot" if case.endswith("h") else "sweep"
                    for path in PATHS:
                        try:
                            row = bench.measure(int(size), path, rate, pattern)
                        except Exception as exc:  # - the row says what failed; the others go on
                            failed = True
                            row = {
                                "state_mib": int(size),
                                "path": path,
                                "error": f"{type(exc).__name__}: {exc}",
                            }
                            print(traceback.format_exc(), file=sys.stderr, flush=True)
                        print(
                            ROW + json.dumps({**row, "dirty_percent_per_s": rate, "pattern": pattern}),
                            flush=True,
                        )
        finally:
            bench.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
