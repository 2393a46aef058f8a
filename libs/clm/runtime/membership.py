"""Replicas that share work find each other: each one is a key in a NATS KV bucket whose
entries expire. A replica rewrites its key every interval and reads the keys; the sorted
live keys give every replica the same list, hence its share (index, count). A replica that
dies stops writing and drops out after the bucket's TTL; a new one is counted at its first
write. So `kubectl scale` changes the split with no configuration.

While the list changes, two replicas may briefly disagree about it (each reads at its own
moment): work split this way must be idempotent, as the labeler's patches are.
"""

from __future__ import annotations

import logging
import re

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

_KEY_UNSAFE = re.compile(r"[^-/_=.a-zA-Z0-9]")


def member_key(replica_id: str) -> str:
    """A replica id as a KV key (the characters NATS allows in keys)."""
    return _KEY_UNSAFE.sub("_", replica_id) or "_"


def share(members: list[str], me: str) -> tuple[int, int]:
    """This replica's index among the sorted members, and their count."""
    ordered = sorted(set(members) | {me})
    return ordered.index(me), len(ordered)


class NatsMembership:
    def __init__(self, js: JetStreamContext, bucket: str, replica_id: str, ttl: float) -> None:
        self.js, self.bucket, self.ttl = js, bucket, ttl
        self.key = member_key(replica_id)
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except (NotFoundError, BadRequestError):
                try:
                    self._kv = await self.js.create_key_value(
                        KeyValueConfig(
                            bucket=self.bucket,
                            ttl=self.ttl,
                            history=1,
                            description="live replicas sharing work (each key expires unless rewritten)",
                        )
                    )
                except BadRequestError:  # another replica created it first
                    self._kv = await self.js.key_value(self.bucket)
        return self._kv

    async def beat(self) -> tuple[int, int]:
        """Say this replica is alive; return its share (index, count) of the live replicas."""
        kv = await self._store()
        await kv.put(self.key, b"")
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        return share(keys, self.key)

    async def leave(self) -> None:
        """Drop out at once (a clean shutdown), rather than after the TTL."""
        try:
            kv = await self._store()
            await kv.delete(self.key)
        except Exception as exc:  # - it expires anyway
            log.warning("leaving the membership failed", extra={"bucket": self.bucket, "error": str(exc)})
