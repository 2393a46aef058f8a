"""What clm-runc (the restore handler's OCI runtime binary) asks, and what the agent answers:
pure functions over runc's command line and the bundle's annotations.

containerd's runc shim calls `<runtime> [global options] create --bundle B --pid-file P ID`
and later `<runtime> [global options] start ID`. For a clone pod's sandbox (the pause
container) the call runs as asked. For a clone's container, `create` becomes
`runc restore --detach` from the images the source sent, into the bundle the shim made
(the clone's fresh root filesystem, its network namespace), and the `start` that follows
is done already. A container with no checkpoint is refused: clones never start fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# runc's global options that take a value (runc --help).
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
# `runc create` options that take a value.
CREATE_WITH_VALUE = {"--bundle", "-b", "--pid-file", "--console-socket", "--preserve-fds"}
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
# The pod sandbox a container is made in: a restarted container of a clone comes back in it.
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
RESTORE = "cast.ai/restore"


class CallError(ValueError):
    """A command line clm-runc should not have sent: answered with exit 2 and this text."""


@dataclass(frozen=True)
class RuncCall:
    globals: list[str]
    command: str
    options: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    container_id: str = ""

    @property
    def bundle(self) -> Path:
        return Path(self.options.get("--bundle") or self.options.get("-b") or ".")

    @property
    def log(self) -> Path | None:
        value = _option(self.globals, "--log")
        return Path(value) if value else None


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: list[str]) -> RuncCall:
    """runc's command line (without the program name), as the shim writes it."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in GLOBAL_WITH_VALUE else 1
    if i >= len(argv):
        raise CallError(f"no runc command in {argv}")
    globals_, command, rest = argv[:i], argv[i], argv[i + 1 :]
    options: dict[str, str] = {}
    flags: list[str] = []
    positional: list[str] = []
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg in CREATE_WITH_VALUE and j + 1 < len(rest):
            options[arg], j = rest[j + 1], j + 2
            continue
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            options[key] = value
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            positional.append(arg)
        j += 1
    if len(positional) != 1:
        raise CallError(f"runc {command} needs one container id, got {positional}")
    return RuncCall(
        globals=globals_, command=command, options=options, flags=flags, container_id=positional[0]
    )


@dataclass(frozen=True)
class Run:
    argv: list[str]
    restores: tuple[str, str] | None = None  # (pod it restores, container name)


@dataclass(frozen=True)
class Exit:
    code: int
    message: str = ""


def as_asked(call: RuncCall, argv: list[str]) -> Run:
    return Run(["runc", *argv])


def restore_command(call: RuncCall, *, images: Path, work: Path, lazy: bool = False) -> list[str]:
    """`runc restore` in place of the shim's `runc create`: same state root and log, the
    bundle and pid file the shim reads, detached so the shim takes over the process. With
    `lazy`, memory comes from a `criu lazy-pages` daemon whose socket is in `work`."""
    argv = ["runc", *call.globals, "restore", "--detach", "--bundle", str(call.bundle)]
    if "--pid-file" in call.options:
        argv += ["--pid-file", call.options["--pid-file"]]
    argv += [f"--image-path={images}", f"--work-path={work}", "--tcp-established"]
    if lazy:
        argv.append("--lazy-pages")
    if "--no-pivot" in call.flags:
        argv.append("--no-pivot")
    return [*argv, call.container_id]


def clone_container(call: RuncCall, annotations: dict[str, str]) -> tuple[str, str] | Exit | None:
    """For `create`: (the pod it restores, its container name) for a clone's container;
    None for the pod's sandbox (runs as asked); an Exit refusing anything else."""
    kind = annotations.get(CONTAINER_TYPE)
    if kind == "sandbox":
        return None
    pod = f"{annotations.get(SANDBOX_NAMESPACE, '?')}/{annotations.get(SANDBOX_NAME, '?')}"
    if kind != "container":
        return Exit(2, f"{call.container_id} in {pod} is neither a pod sandbox nor a container ({kind!r})")
    source = annotations.get(RESTORE)
    if not source:
        return Exit(
            1,
            f"pod {pod} is not a clone (no {RESTORE} annotation reached the runtime): the clm-restore "
            "RuntimeClass only restores clone pods; other pods use the node's default runtime",
        )
    if "--console-socket" in call.options:
        return Exit(
            1, f"container {annotations.get(CONTAINER_NAME)} of {pod} has a terminal (tty): not restorable"
        )
    return source, annotations.get(CONTAINER_NAME, "")
