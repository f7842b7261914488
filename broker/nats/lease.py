"""Which process does a job that one process at a time must do: a lease in a KV bucket.

Batches (``run.<batch-id>`` in the batches bucket: several batchers may run, each batch
is run by one of them) and canaries (the experiments bucket: one process judges and
steps them) use it. The key names the holder and when its hold ends; the holder renews
it every third of the TTL. Every change is a compare-and-set on the key's revision, so
two processes never both believe they hold it. A holder that dies stops renewing, and
another takes the job over once the hold has ended.

Expiry is judged by the processes' wall clocks: clocks apart by more than the TTL would
let two of them do the job at once (a batch's results still count once per line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class Hold(msgspec.Struct):
    owner: str
    until_ms: int  # wall clock, Unix epoch milliseconds


_decoder = msgspec.json.Decoder(Hold)


def new_owner() -> str:
    """A process's name in leases: host and pid (for people), and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class KVLease:
    def __init__(self, kv: KeyValue, key: str, owner: str, ttl_s: float) -> None:
        self._kv = kv
        self._key = key
        self.owner = owner
        self.ttl_s = ttl_s
        self._revision: int | None = None
        self._until_ms = 0

    @property
    def held(self) -> bool:
        return self._revision is not None

    def _value(self) -> bytes:
        self._until_ms = int((time.time() + self.ttl_s) * 1000)
        return msgspec.json.encode(Hold(self.owner, self._until_ms))

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it or the hold has ended (or renew it, held by
        this owner); False otherwise."""
        try:
            entry = await self._kv.get(self._key)
        except KeyNotFoundError:  # never held, or released (a delete marker)
            try:
                self._revision = await self._kv.create(self._key, self._value())
            except KeyWrongLastSequenceError:
                return False  # another batcher was quicker
            return True
        try:
            hold = _decoder.decode(entry.value or b"")
        except msgspec.DecodeError:
            hold = Hold("", 0)  # unreadable: treat as ended
        if hold.owner != self.owner and hold.until_ms > time.time() * 1000:
            return False
        try:
            self._revision = await self._kv.update(self._key, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        if hold.owner and hold.owner != self.owner:
            log.info("%s: taking over from %s", self._key, hold.owner)
        return True

    async def keep(self) -> None:
        """Renew until cancelled; returns when the lease is lost (taken over, or not
        renewed before it ended), and then the caller must stop doing the job."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                self._revision = await self._kv.update(
                    self._key, self._value(), last=self._revision
                )
            except KeyWrongLastSequenceError:
                self._revision = None
                return
            except Exception as exc:  # NATS unreachable: retry while the hold lasts
                if time.time() * 1000 >= self._until_ms:
                    log.warning("%s: lease not renewed in time (%s)", self._key, exc)
                    self._revision = None
                    return

    async def release(self) -> None:
        """Let another process take the job at once (it finished, or failed)."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        try:
            await self._kv.delete(self._key, last=revision)
        except Exception as exc:  # it ends by itself after the TTL
            log.debug("%s: lease not released (%s)", self._key, exc)
