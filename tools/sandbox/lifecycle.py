"""What happens when a sandbox container exits, as kubelet does it (sandbox code): the
restart policy, the crash-loop back-off and the pod's phase. CRI reports the exit codes."""

from __future__ import annotations

# kubelet's crash-loop back-off: 10 s, doubling, at most 5 minutes.
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0


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
