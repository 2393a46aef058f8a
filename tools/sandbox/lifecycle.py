"""What happens when a sandbox container exits, as kubelet does it (sandbox code).

`runc run -d` leaves the container's first process without a parent that waits for it; the
sandbox process makes itself a child subreaper, so those processes (and the ones CRIU
restores under the node agents it started) become its children and their exit statuses
can be collected with waitpid — the exit code `runc state` does not report.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36
# kubelet's crash-loop back-off: 10 s, doubling, at most 5 minutes.
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def exit_code(pid: int) -> int | None:
    """The exit code of our child `pid` once it has exited (128 + signal when killed), None
    while it runs or when it is not our child."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def after_exit(restart_policy: str | None, code: int) -> str:
    """ "restart", or the container's final outcome ("Succeeded" or "Failed")."""
    policy = restart_policy or "Always"
    if policy == "Always" or (policy == "OnFailure" and code != 0):
        return "restart"
    return "Succeeded" if code == 0 else "Failed"


def restart_delay(restarts: int) -> float:
    """The first restart is at once; then the back-off doubles."""
    if restarts == 0:
        return 0.0
    return min(BACKOFF_FIRST_SECONDS * 2 ** (restarts - 1), BACKOFF_MAX_SECONDS)


def pod_phase(outcomes: list[str | None]) -> str | None:
    """The pod's phase once every container has a final outcome; None while any runs."""
    if not outcomes or any(o is None for o in outcomes):
        return None
    return "Succeeded" if all(o == "Succeeded" for o in outcomes) else "Failed"
