"""How `clm migrate` shows one move while it runs: a live progress bar (rich) on a terminal,
one line per change of phase (and per tenth of the way) anywhere else, so logs and pipes
stay readable."""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from clm.contracts.protocol import Phase

Status = dict[str, Any]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def describe(status: Status) -> dict[str, str]:
    """The parts of a status a person reads while the move runs, as text (empty when unknown)."""
    progress = status.get("progress") or {}
    done, total = int(progress.get("bytesDone", 0)), int(progress.get("bytesTotal", 0))
    if "pagesTotal" in progress:
        moved = f"{progress.get('pagesOnDestination', 0)}/{progress['pagesTotal']} pages"
    elif total:
        moved = f"{human_bytes(done)}/{human_bytes(total)}"
    else:
        moved = human_bytes(done) if done else ""
    rate = progress.get("bytesPerSecond")
    frozen = status.get("freezeSeconds", progress.get("frozenSeconds"))
    return {
        "phase": str(status.get("phase") or Phase.PENDING),
        "step": str(progress.get("step", "")),
        "percent": f"{float(progress['percent']):.0f}%" if "percent" in progress else "",
        "moved": moved,
        "total_moved": human_bytes(int(progress["bytesMoved"])) if progress.get("bytesMoved") else "",
        "rate": f"{human_bytes(float(rate))}/s" if rate else "",
        "eta": seconds(progress.get("etaSeconds")),
        "frozen": seconds(float(frozen)) if frozen is not None else "",
        "message": str(status.get("message", "")),
    }


class MoveView(Protocol):
    def show(self, status: Status) -> None: ...

    def close(self) -> None: ...


class PlainLines:
    """A line when the phase or message changes, or the move got another tenth of the way."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: tuple[str, str, int] | None = None

    def show(self, status: Status) -> None:
        shown = describe(status)
        percent = float((status.get("progress") or {}).get("percent", 0.0))
        key = (shown["phase"], shown["message"], int(percent // 10))
        if key == self._last:
            return
        self._last = key
        extra = " ".join(p for p in (shown["step"], shown["moved"], shown["rate"]) if p)
        percent_text = f" {shown['percent']}" if shown["percent"] else ""
        print(
            f"  {shown['phase']}{percent_text}: {shown['message']}" + (f" [{extra}]" if extra else ""),
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        return None


class LiveBar:
    """A rich progress bar: phase and step, percent, bytes, rate, ETA and the freeze so far;
    each change of phase stays above it as a line."""

    def __init__(self, out: TextIO) -> None:
        self.console = Console(file=out)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[moved]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[frozen]}"),
            console=self.console,
        )
        self.task: TaskID = self.bar.add_task("Pending", total=100.0, moved="", rate="", eta="", frozen="")
        self._phase: tuple[str, str] | None = None
        self.bar.start()

    def show(self, status: Status) -> None:
        shown = describe(status)
        if (shown["phase"], shown["message"]) != self._phase:
            self._phase = (shown["phase"], shown["message"])
            self.bar.console.print(f"  {shown['phase']}: {shown['message']}")
        self.bar.update(
            self.task,
            description=f"{shown['phase']} {shown['step']}".strip(),
            completed=float((status.get("progress") or {}).get("percent", 0.0)),
            moved=shown["moved"],
            rate=shown["rate"],
            eta=f"ETA {shown['eta']}" if shown["eta"] else "",
            frozen=f"frozen {shown['frozen']}" if shown["frozen"] else "",
        )

    def close(self) -> None:
        self.bar.stop()


def move_view(out: TextIO) -> MoveView:
    return LiveBar(out) if out.isatty() else PlainLines(out)
