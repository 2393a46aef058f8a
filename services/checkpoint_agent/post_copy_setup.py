"""What post-copy needs of the node, set when the agent starts.

CRIU's page server tees lazy pages through a pipe that it grows to 4 MiB with
fcntl(F_SETPIPE_SZ). Beyond `fs.pipe-max-size` (1 MiB by default) that needs
CAP_SYS_RESOURCE, which root in a container often lacks; CRIU ignores the failed fcntl and
then reports a short tee() as "tee: Operation not permitted". So the agent raises the limit,
as kubelet tunes a node, and reports post-copy unavailable if it cannot.
"""

from __future__ import annotations

from pathlib import Path

PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
NEEDED_PIPE_BYTES = 4 << 20


def ensure_pipe_size(path: Path = PIPE_MAX_SIZE, needed: int = NEEDED_PIPE_BYTES) -> str | None:
    """Raise the node's pipe size limit to `needed` if lower; why post-copy cannot work, or None."""
    try:
        current = int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {exc}"
    if current >= needed:
        return None
    try:
        path.write_text(str(needed))
    except OSError as exc:
        return (
            f"fs.pipe-max-size is {current} and cannot be raised to {needed} ({exc.strerror}): "
            "CRIU's page server needs it; run the agent privileged or set the sysctl on the node"
        )
    return None


def post_copy_problem(
    *, userfaultfd: bool, pipe_problem: str | None, pages_address: str | None
) -> str | None:
    """Why this node cannot take part in a post-copy move, or None when it can."""
    if not userfaultfd:
        return "userfaultfd is unavailable (criu check --feature uffd-noncoop)"
    if pipe_problem:
        return pipe_problem
    if not pages_address:
        return "the agent's page relay is not listening"
    return None
