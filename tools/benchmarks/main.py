"""tools/bench NAME [--json] [--quick]: CLM's benchmarks behind one entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tools.benchmarks import events
from tools.benchmarks.report import emit

BENCHMARKS: dict[str, tuple[str, Callable[[bool], list[dict[str, Any]]]]] = {
    "events": ("Events through JetStream: throughput and publish-to-handler latency", events.run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--json", action="store_true", help="one JSON object per result row")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: checks the benchmark runs, numbers are not meaningful")
    args = parser.parse_args(argv)
    title, run = BENCHMARKS[args.name]
    emit(title, run(args.quick), as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
