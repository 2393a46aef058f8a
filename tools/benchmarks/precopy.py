"""tools/bench precopy: pre-copy against stop-and-copy, in a VM whose kernel tracks dirty memory.

This machine's kernel has no soft-dirty bits, so the benchmark boots Debian's kernel under
qemu (tests/kit/vm, the same VM as tests/integration/test_precopy_vm.py) and runs
`precopy_guest.py` there: the stateful server of `tools/bench migrate` with a writer that
rewrites 1%, 10% or 50% of its pages every second, moved by both nodes' real agents, once
with stop-and-copy and once with pre-copy, for each state size. The client-visible
interruption (the largest gap between two answers) is the freeze users feel.

Everything in the VM runs under software emulation (about 7x slower for Python, slower still
for the copy through TLS), while the writer dirties memory by the wall clock: the dirty rate
is harsher against the VM's channel than it would be against a real node's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tests.kit.vm.boot import missing_requirements, run_in_vm
from tools.benchmarks.migrate import AGENT_MAINS
from tools.benchmarks.precopy_guest import ROW

Table = tuple[str, list[dict[str, Any]]]
PLOT_PATH = Path("dist/bench/precopy.png")
GUEST = "tools.benchmarks.precopy_guest"
PRE_COPY_COLUMNS = ("rounds", "round_pages", "round_dirtied", "final_pages", "strategy", "verdict")


def rows_from(console: str) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix(ROW)) for line in console.splitlines() if line.startswith(ROW)]


def side_by_side(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pre-copy over stop-and-copy for each size, dirty rate and writer, from the same run."""
    out = []

    def case(r: dict[str, Any]) -> tuple[int, float, str]:
        return (r["state_mib"], r["dirty_percent_per_s"], r.get("pattern", "sweep"))

    for size, rate, pattern in sorted({case(r) for r in rows}):
        pair = {r["path"]: r for r in rows if case(r) == (size, rate, pattern)}
        stop, pre = pair.get("stop-and-copy"), pair.get("pre-copy")
        if not stop or not pre or "error" in stop or "error" in pre:
            continue
        goal = "<= 0.2" if (size, rate) == (1024, 1) else "<= 1" if rate >= 50 else ""
        out.append(
            {
                "state_mib": size,
                "dirty_percent_per_s": rate,
                "pattern": pattern,
                "freeze_pre_over_stop": round(pre["interruption_s"] / stop["interruption_s"], 3),
                "total_pre_over_stop": round(pre["total_s"] / stop["total_s"], 3),
                "rounds": pre.get("rounds") or 0,
                "goal": goal,
            }
        )
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, ax, label in (
        ("interruption_s", axes[0], "client-visible interruption (s)"),
        ("total_s", axes[1], "total migration time (s)"),
    ):
        for size in sorted({r["state_mib"] for r in rows}):
            for name, marker in (("stop-and-copy", "o"), ("pre-copy", "^")):
                points = sorted(
                    (r["dirty_percent_per_s"], r[metric])
                    for r in rows
                    if r["state_mib"] == size
                    and r["path"] == name
                    and metric in r
                    and r.get("pattern", "sweep") == "sweep"
                )
                if points:
                    ax.plot(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        marker=marker,
                        label=f"{name}, {size} MiB",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("memory dirtied per second (% of the state)")
        ax.set_ylabel(label)
        ax.grid(visible=True, alpha=0.3)
        ax.legend()
    fig.suptitle("Pre-copy vs stop-and-copy (in a VM: software-emulated CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(*, quick: bool, plot_path: Path = PLOT_PATH) -> list[Table]:
    if missing := missing_requirements():
        raise SystemExit(
            f"tools/bench precopy needs {', '.join(missing)}: run tools/setup/install-system-deps"
        )
    # The goals first (1 GiB at 1 and 50 %/s): a run cut short still has them.
    sizes, rates = ("64", "1,50,1h") if quick else ("1024,256", "1,50,1h,10")
    mode_sizes = "64" if quick else "256,1024"
    with tempfile.TemporaryDirectory(prefix="clm-bench-precopy-", dir="/var/tmp") as tmp:
        guest = run_in_vm(
            Path(tmp),
            ["-m", GUEST, "--sizes", sizes, "--rates", rates, "--mode-sizes", mode_sizes],
            modules=[GUEST, *AGENT_MAINS, "tests.kit.workloads.counting_client"],
            # A 1 GiB pod, its images on both nodes and its restored copy, all in memory.
            memory_mib=3072 if quick else 7168,
            timeout=1800 if quick else 7200,
        )
    # The table's columns are the first row's: stop-and-copy rows get the pre-copy ones, empty.
    found = rows_from(guest.console)
    modes = [r for r in found if r.get("kind") == "pre-dump-mode"]
    rows = [{**dict.fromkeys(PRE_COPY_COLUMNS, ""), **r} for r in found if r not in modes]
    if not rows:
        raise SystemExit(f"the VM measured nothing (exit {guest.exit_code}):\n{guest.console[-4000:]}")
    written = plot([r for r in rows if "error" not in r], plot_path)
    return [
        ("Pre-copy vs stop-and-copy in the VM, by state size and dirty rate (seconds)", rows),
        ("Side by side: pre-copy over stop-and-copy (lower is better)", side_by_side(rows)),
        (
            "CRIU's pre-dump modes, two rounds with `criu pre-dump` (frozen: CRIU's stats; "
            "gap: the largest a client saw)",
            modes,
        ),
        ("Plot", [{"png": str(written)}]),
    ]
