"""tools/bench NAME [--json] [--quick]: CLM's benchmarks behind one entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tools.benchmarks import events, kube_emulator, labeler, migrate, plan, planner_cycle, precopy, soak
from tools.console.report import emit

Table = tuple[str, list[dict[str, Any]]]

# name -> (what it measures, run(quick=...) -> tables)
BENCHMARKS: dict[str, tuple[str, Callable[..., list[Table]]]] = {
    "events": (
        "events published and consumed through JetStream, publish-to-handler latency",
        lambda *, quick: [
            ("Events through JetStream: throughput and publish-to-handler latency", events.run(quick=quick))
        ],
    ),
    "plan": ("bin-packing plan time at 500 and 5,000 nodes; gap to the exact optimum", plan.run),
    "kube-emulator": ("the API emulator: list of 150,000 pods, watch of 10,000 changes", kube_emulator.run),
    "labeler": (
        "the labeler's first full assessment of 150,000 pods through the API emulator "
        "(1 and 2 replicas), and a restart that must patch nothing",
        labeler.run,
    ),
    "planner-cycle": (
        "the evictor-planner's end-to-end cycle at 5,000 nodes (snapshot, plan, API "
        "steps, plan published), dry-run, default and aggressive",
        planner_cycle.run,
    ),
    "migrate": (
        "live migration of a stateful pod (64 MiB-4 GiB): client-visible interruption and "
        "total time, CLM stop-and-copy vs dump/copy/restore; writes dist/bench/migrate.png (root)",
        migrate.run,
    ),
    "precopy": (
        "pre-copy vs stop-and-copy in a VM whose kernel tracks dirty memory (256 MiB and 1 GiB, a "
        "writer dirtying 1/10/50% of the memory per second); writes dist/bench/precopy.png (root)",
        precopy.run,
    ),
    "soak": (
        "chaos soak: moves between three sandbox nodes under load with a fault in each "
        "(service kills, NATS and API restarts, partitions, packet loss, full disk); root",
        soak.run,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench", description=__doc__)
    parser.add_argument(
        "name",
        choices=sorted(BENCHMARKS),
        # argparse expands % in help texts.
        help="which benchmark to run: "
        + "; ".join(f"{name}: {what}" for name, (what, _) in sorted(BENCHMARKS.items())).replace("%", "%%"),
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per result row")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: checks the benchmark runs, numbers are not meaningful",
    )
    parser.add_argument("--faults", type=int, help="soak: how many faulted moves (default 100, --quick 30)")
    parser.add_argument(
        "--fault", action="append", help="soak: only this fault kind (repeatable; default every kind)"
    )
    parser.add_argument("--seed", type=int, default=1, help="soak: the random seed of faults and phases")
    parser.add_argument(
        "--strategy",
        default="stop-and-copy",
        help="soak: stop-and-copy (default), post-copy, or mixed (a coin per move)",
    )
    args = parser.parse_args(argv)
    _, run = BENCHMARKS[args.name]
    extra = (
        {"faults": args.faults, "seed": args.seed, "kinds": args.fault, "strategy": args.strategy}
        if args.name == "soak"
        else {}
    )
    for title, rows in run(quick=args.quick, **extra):
        emit(title, rows, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
