"""One active replica: a lease held as a key in a NATS KV bucket whose entries expire.

The holder writes the key at most `ttl / 3` apart, each write conditional on the revision
it wrote last; a replica that dies stops writing and the entry expires after `ttl`, when
another replica's `create` succeeds. Two replicas never both believe they hold it for
longer than one renewal interval (a holder that fails to renew steps down at once).
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class NatsLease:
    def __init__(
        self, js: JetStreamContext, bucket: str, holder: str, ttl: float, key: str = "leader"
    ) -> None:
        self.js, self.bucket, self.holder, self.ttl, self.key = js, bucket, holder, ttl, key
        self.revision: int | None = None
        self._kv: KeyValue | None = None

    @property
    def held(self) -> bool:
        return self.revision is not None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except (NotFoundError, BadRequestError):
                self._kv = await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=self.bucket,
                        ttl=self.ttl,
                        history=1,
                        description="who holds the lease (one active replica)",
                    )
                )
        return self._kv

    async def renew(self) -> bool:
        """Take the lease if it is free, keep it if held; False when another replica holds it."""
        kv = await self._store()
        value = self.holder.encode()
        if self.revision is not None:
            try:
                self.revision = await kv.update(self.key, value, last=self.revision)
                return True
            except (KeyWrongLastSequenceError, BadRequestError, KeyNotFoundError):
                log.warning("lease lost", extra={"bucket": self.bucket, "holder": self.holder})
                self.revision = None
        try:
            self.revision = await kv.create(self.key, value)
            log.info("lease taken", extra={"bucket": self.bucket, "holder": self.holder})
            return True
        except (KeyWrongLastSequenceError, BadRequestError):
            pass
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return False  # expired just now: the next round takes it
        if entry.value == value and entry.revision is not None:  # ours, from before a restart
            self.revision = await kv.update(self.key, value, last=entry.revision)
            return True
        return False

    async def release(self) -> None:
        if self.revision is None:
            return
        try:
            kv = await self._store()
            await kv.delete(self.key, last=self.revision)
        except Exception as exc:  # - it expires anyway
            log.warning("lease not released", extra={"error": str(exc)[:200]})
        self.revision = None
