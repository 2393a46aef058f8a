"""What the IP-handover agent has done to its node, kept on disk so a restart reconciles
instead of leaking.

Before each action the agent writes the pod's record with the action it is about to take
(`pending`); after it, the state it reached. A restarted agent finds records whose action
never finished and finishes them (every action is idempotent), and repairs records whose
node state drifted (an announced pod whose route is gone is announced again; a withdrawn
pod whose route is back is withdrawn again). Records of finished aborts and releases are
removed. Namespaces or routes with no record are not the agent's (the CNI plugin made
them for pods it set up): they are reported, never touched.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

# The state each action leaves a pod's network in.
REACHED = {"prepare": "prepared", "announce": "announced", "withdraw": "withdrawn"}
# Actions after which nothing of the pod is left on the node (the record goes too).
FINAL = {"abort", "release"}


@dataclass
class Record:
    uid: str
    ip: str
    # "prepared" / "announced" / "withdrawn"; "" before the first action finished.
    state: str = ""
    # The action started and not yet finished, if any.
    pending: str | None = None


class Ledger:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def get(self, uid: str) -> Record | None:
        path = self._path(uid)
        return Record(**json.loads(path.read_text())) if path.exists() else None

    def all(self) -> list[Record]:
        if not self.directory.is_dir():
            return []
        return [Record(**json.loads(p.read_text())) for p in sorted(self.directory.glob("*.json"))]

    def _write(self, record: Record) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Its own temporary name: two writers never rename each other's file away.
        tmp = self._path(record.uid).with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self._path(record.uid))  # never a half-written record

    def begin(self, uid: str, ip: str, action: str) -> None:
        record = self.get(uid) or Record(uid=uid, ip=ip)
        record.pending, record.ip = action, ip
        self._write(record)

    def finish(self, uid: str, action: str) -> None:
        if action in FINAL:
            self._path(uid).unlink(missing_ok=True)
            return
        record = self.get(uid)
        if record is None:
            return
        record.pending, record.state = None, REACHED[action]
        self._write(record)


def reconcile_actions(records: list[Record], routed_ips: set[str]) -> list[tuple[str, Record]]:
    """What a restarted agent does: (action, record) in order. `routed_ips` are the pod IPs
    the node routes now (from the backend's inventory)."""
    actions: list[tuple[str, Record]] = []
    for record in records:
        if record.pending:
            actions.append((record.pending, record))
        elif record.state == "announced" and record.ip not in routed_ips:
            actions.append(("announce", record))
        elif record.state == "withdrawn" and record.ip in routed_ips:
            actions.append(("withdraw", record))
    return actions
