"""Where a move's freeze went, phase by phase (pure).

From the agents' step details (CRIU's own stats on the source, the agents' clocks) and the
coordinator's clock from the dump command to the end of the network commit. What no agent
accounts for is coordination: NATS and the coordinator between the steps.
"""

from __future__ import annotations

from collections.abc import Mapping


def _f(details: Mapping[str, object], key: str) -> float:
    value = details.get(key, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def waterfall(
    dump: Mapping[str, object], restore: Mapping[str, object], commit_seconds: float, frozen_seconds: float
) -> list[dict[str, float | str]]:
    """[{"phase", "seconds"}] in the order they happen; they add up to `frozen_seconds`."""
    freezing = _f(dump, "freezing_seconds")
    memory = _f(dump, "memdump_seconds") + _f(dump, "memwrite_seconds")
    frozen_in_criu = _f(dump, "frozen_seconds")
    phases = [
        ("freeze", freezing),
        ("dump_state", max(0.0, frozen_in_criu - memory)),
        ("memory", memory),
        ("runtime", max(0.0, _f(dump, "dump_seconds") - freezing - frozen_in_criu)),
        ("package", _f(dump, "package_seconds")),
        ("transfer", _f(dump, "transfer_seconds")),
        ("unpack", _f(restore, "unpack_seconds")),
        ("restore", _f(restore, "runtime_restore_seconds") or _f(restore, "restore_seconds")),
        ("network_commit", commit_seconds),
    ]
    accounted = sum(seconds for _, seconds in phases)
    phases.append(("coordination", max(0.0, frozen_seconds - accounted)))
    return [{"phase": name, "seconds": round(seconds, 4)} for name, seconds in phases]
