"""Where a move's freeze went, phase by phase (pure).

From the agents' step details (CRIU's own stats on the source, the agents' clocks) and the
coordinator's clock from the dump command to the end of the network commit. What no agent
accounts for is coordination: NATS and the coordinator between the steps.
"""

from __future__ import annotations

from collections.abc import Mapping

from clm.policy.details import number


def waterfall(
    dump: Mapping[str, object], restore: Mapping[str, object], commit_seconds: float, frozen_seconds: float
) -> list[dict[str, float | str]]:
    """[{"phase", "seconds"}] in the order they happen; they add up to `frozen_seconds`."""
    freezing = number(dump, "freezing_seconds")
    memory = number(dump, "memdump_seconds") + number(dump, "memwrite_seconds")
    frozen_in_criu = number(dump, "frozen_seconds")
    phases = [
        ("freeze", freezing),
        ("dump_state", max(0.0, frozen_in_criu - memory)),
        ("memory", memory),
        ("runtime", max(0.0, number(dump, "dump_seconds") - freezing - frozen_in_criu)),
        ("package", number(dump, "package_seconds")),
        ("transfer", number(dump, "transfer_seconds")),
        ("unpack", number(restore, "unpack_seconds")),
        ("restore", number(restore, "runtime_restore_seconds") or number(restore, "restore_seconds")),
        ("network_commit", commit_seconds),
    ]
    accounted = sum(seconds for _, seconds in phases)
    phases.append(("coordination", max(0.0, frozen_seconds - accounted)))
    return [{"phase": name, "seconds": round(seconds, 4)} for name, seconds in phases]
