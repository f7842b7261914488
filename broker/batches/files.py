"""Batch input, output and error files in a JetStream Object Store (``<prefix>_files``).

An object is named by its file id; OpenAI's file attributes (filename, purpose, creation
time) ride in the object's description as JSON. Objects are written from a file-like
object in 128 KiB chunks and read back chunk by chunk through a pull consumer, so a file
of any size passes through in bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectMeta,
    ObjectStoreConfig,
    StorageType,
)
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from broker.nats.provision import ensure_replicas
from broker.nats.subjects import FILES, bucket
from schemas.batch import FileObject
from schemas.config import Config
from schemas.errors import BrokerError, NotFound

CHUNKS_PER_FETCH = 8  # 1 MiB of a file in hand at most
READ_ATTEMPTS = 6  # cut reads in a row before a download fails (0.5 + 1 + ... 2.5 s apart)

log = logging.getLogger(__name__)


class _Attributes(msgspec.Struct, omit_defaults=True):
    filename: str
    purpose: str
    created_at: int
    tenant: str | None = None  # the owner's tenant when keys are required


_attributes = msgspec.json.Decoder(_Attributes)


def new_file_id() -> str:
    """``file-`` + creation time in ms (hex, so ids sort by age) + randomness."""
    return f"file-{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def file_not_found(file_id: str) -> BrokerError:
    return NotFound(404, f"No such File object: {file_id}", param="file_id", code="not_found")


class FileStore:
    def __init__(self, js: JetStreamContext, store: ObjectStore, name: str) -> None:
        self._js = js
        self._store = store
        self._bucket = name

    @classmethod
    async def open(cls, js: JetStreamContext, config: Config) -> FileStore:
        name = bucket(config.nats.subject_prefix, FILES)
        try:
            store = await js.object_store(name)
            await ensure_replicas(js, f"OBJ_{name}", config.nats.replicas)
        except NotFoundError:
            store = await js.create_object_store(
                name,
                config=ObjectStoreConfig(
                    bucket=name,
                    description="promptbus batch files",
                    storage=StorageType.FILE,
                    replicas=config.nats.replicas,
                ),
            )
        return cls(js, store, name)

    async def put(
        self,
        source: BinaryIO,
        filename: str,
        purpose: str,
        file_id: str | None = None,
        tenant: str | None = None,
    ) -> FileObject:
        """Store ``source`` (read in chunks, never whole) as a new file of ``tenant``."""
        file_id = file_id or new_file_id()
        attributes = _Attributes(
            filename=filename, purpose=purpose, created_at=int(time.time()), tenant=tenant
        )
        meta = ObjectMeta(name=file_id, description=msgspec.json.encode(attributes).decode())
        info = await self._store.put(file_id, source, meta=meta)  # type: ignore[arg-type]
        return FileObject(
            id=file_id,
            bytes=info.size or 0,
            created_at=attributes.created_at,
            filename=filename,
            purpose=purpose,
        )

    async def info(self, file_id: str) -> FileObject:
        try:
            info = await self._store.get_info(file_id)
        except NotFoundError:
            raise file_not_found(file_id) from None
        return _file_object(file_id, info.size or 0, info.description)

    async def check_owner(self, file_id: str, tenant: str | None) -> None:
        """Another tenant's file does not exist for this one (404, not 403: no probing)."""
        if tenant is None:
            return
        try:
            info = await self._store.get_info(file_id)
        except NotFoundError:
            raise file_not_found(file_id) from None
        if _owner(info.description) != tenant:
            raise file_not_found(file_id)

    async def list(self, purpose: str | None = None, tenant: str | None = None) -> list[FileObject]:
        try:
            infos = await self._store.list()
        except NotFoundError:  # an empty bucket
            return []
        infos = [i for i in infos if tenant is None or _owner(i.description) == tenant]
        files = [_file_object(i.name, i.size or 0, i.description) for i in infos if not i.deleted]
        files = [f for f in files if purpose is None or f.purpose == purpose]
        return sorted(files, key=lambda f: f.id, reverse=True)

    async def delete(self, file_id: str) -> None:
        await self.info(file_id)
        await self._store.delete(file_id)

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's content in stored chunks, fetched a few at a time. A read cut off
        (a stream-leader election, a reconnect, a lost consumer) goes on from the next
        chunk's stream sequence with a new consumer, so a download never restarts or
        repeats bytes; it fails only after ``READ_ATTEMPTS`` cuts in a row."""
        try:
            info = await self._store.get_info(file_id)
        except NotFoundError:
            raise file_not_found(file_id) from None
        total = info.chunks or 0
        seen, next_seq, cuts = 0, 0, 0
        while seen < total:
            sub: JetStreamContext.PullSubscription | None = None
            try:
                sub = await self._chunk_consumer(info.nuid or "", next_seq)
                while seen < total:
                    for msg in await sub.fetch(min(CHUNKS_PER_FETCH, total - seen), timeout=10):
                        seen += 1
                        next_seq = msg.metadata.sequence.stream + 1
                        cuts = 0
                        yield msg.data
            except Exception as exc:  # not GeneratorExit or CancelledError: a cut read
                cuts += 1
                if cuts >= READ_ATTEMPTS:
                    raise
                log.warning("file %s: reading on from chunk %d (%s)", file_id, seen, exc)
                await asyncio.sleep(0.5 * cuts)
            finally:
                if sub is not None:
                    await self._drop(sub)

    async def _chunk_consumer(self, nuid: str, start_seq: int) -> JetStreamContext.PullSubscription:
        """An ephemeral consumer of an object's chunks, from ``start_seq`` (0: the first)."""
        return await self._js.pull_subscribe(
            f"$O.{self._bucket}.C.{nuid}",
            stream=f"OBJ_{self._bucket}",
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
                opt_start_seq=start_seq or None,
                inactive_threshold=60.0,
            ),
        )

    async def _drop(self, sub: JetStreamContext.PullSubscription) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self._js.delete_consumer(f"OBJ_{self._bucket}", sub._consumer)

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines without their line ends, blank lines included."""
        rest = b""
        async for chunk in self.chunks(file_id):
            data = rest + chunk if rest else chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r")
        if rest:
            yield rest.rstrip(b"\r")


def _owner(description: str | None) -> str | None:
    try:
        return _attributes.decode(description or "").tenant
    except msgspec.DecodeError:
        return None


def _file_object(file_id: str, size: int, description: str | None) -> FileObject:
    try:
        attributes = _attributes.decode(description or "")
    except msgspec.DecodeError:
        attributes = _Attributes(filename=file_id, purpose="unknown", created_at=0)
    return FileObject(
        id=file_id,
        bytes=size,
        created_at=attributes.created_at,
        filename=attributes.filename,
        purpose=attributes.purpose,
    )
