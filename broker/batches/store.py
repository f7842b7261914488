"""Batch records in the ``<prefix>_batches`` KV bucket: create, read, list, cancel.

Keys: ``<batch-id>`` holds a ``BatchRecord`` (the OpenAI Batch object and the number of
lines published to the lane), ``ckpt.<batch-id>`` the publishing checkpoint (input lines
handled so far), ``src.<sha256>`` the batch made from a given file (CLI resume).
Status changes use compare-and-set on the key's revision, so the runner and a cancel
from an HTTP or CLI caller never overwrite each other.

The ingress, the CLI and NATS-side users all go through this class.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote, unquote

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from broker.batches.files import FileStore
from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import BATCHES, Subjects, bucket
from schemas.batch import (
    BATCH_ENDPOINTS,
    COMPLETION_WINDOWS,
    TERMINAL,
    Batch,
    BatchCreate,
    BatchList,
    BatchRecord,
    BatchStatus,
    batch_decoder,
    encoder,
)
from schemas.config import Config
from schemas.errors import BrokerError, InvalidRequest, NotFound

CANCELLABLE = frozenset({BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS})


def new_batch_id() -> str:
    """``batch_`` + creation time in ms (hex, so ids sort by age) + randomness."""
    return f"batch_{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def lane_subject(subjects: Subjects, model: str) -> str:
    """Where batch lines are queued: the model's batch lane, served by every deployment
    with the slots interactive requests leave idle."""
    return subjects.bulk(model)


def result_subject(subjects: Subjects, batch_id: str) -> str:
    """The reply subject of every line of a batch: captured by the results stream, so a
    result is stored whether or not anyone listens. One subject per batch, not per line:
    nats-server keeps an index entry per subject (about 300 bytes), which for a batch of
    a million lines was most of its memory. A reply names its line in headers: the
    request id ``<batch>-<index>`` and the ``Pb-Custom-Id`` the worker echoes."""
    return subjects.bres(batch_id)


def line_request_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


def line_index(request_id: str) -> int:
    """The input line a result answers, from its echoed request id (ValueError if none)."""
    return int(request_id.rpartition("-")[2])


def encode_custom_id(text: str) -> str:
    """A line's ``custom_id`` as a ``Pb-Custom-Id`` header value: any string, percent-encoded
    UTF-8 (a header holds no line breaks and, through nats-py, only ASCII reliably)."""
    return quote(text, safe="").replace(".", "%2E") or "%00"


def decode_custom_id(token: str) -> str:
    return "" if token == "%00" else unquote(token)


def batch_not_found(batch_id: str) -> BrokerError:
    return NotFound(404, f"No such Batch object: {batch_id}", param="batch_id", code="not_found")


class BatchStore:
    def __init__(
        self,
        kv: KeyValue,
        files: FileStore,
        subjects: Subjects,
        js: JetStreamContext | None = None,
        bucket_name: str = "",
    ) -> None:
        self.kv = kv
        self.files = files
        self.subjects = subjects
        self._js, self._bucket = js, bucket_name  # for reads from the stream's leader

    @classmethod
    async def open(cls, js: JetStreamContext, config: Config) -> BatchStore:
        subjects = Subjects.of(config)
        await ensure_stream(js, config, subjects, StreamKind.RESULTS)
        kv = await ensure_bucket(js, config, BATCHES)
        name = bucket(config.nats.subject_prefix, BATCHES)
        return cls(kv, await FileStore.open(js, config), subjects, js, name)

    # ------------------------------------------------------------ records

    async def create(self, request: BatchCreate, owner: tuple[str, str] | None = None) -> Batch:
        """A new batch in ``validating``; the runner takes it from there. ``owner`` (key
        id, tenant): its lines run as that key's requests."""
        if request.endpoint not in BATCH_ENDPOINTS:
            raise InvalidRequest(
                400,
                f"Unsupported endpoint `{request.endpoint}`: batches support "
                + " and ".join(BATCH_ENDPOINTS)
                + ".",
                param="endpoint",
                code="invalid_value",
            )
        window = COMPLETION_WINDOWS.get(request.completion_window)
        if window is None:
            raise InvalidRequest(
                400,
                f"Unsupported completion_window `{request.completion_window}`: use "
                + ", ".join(COMPLETION_WINDOWS),
                param="completion_window",
                code="invalid_value",
            )
        await self.files.check_owner(request.input_file_id, owner[1] if owner else None)
        source = await self.files.info(request.input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(
                400,
                f"File {source.id} has purpose `{source.purpose}`; a batch needs `batch`.",
                param="input_file_id",
                code="invalid_file",
            )
        now = int(time.time())
        batch = Batch(
            id=new_batch_id(),
            endpoint=request.endpoint,
            input_file_id=request.input_file_id,
            completion_window=request.completion_window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + window,
            metadata=request.metadata,
        )
        key_id, tenant = owner or (None, None)
        record = BatchRecord(batch=batch, key_id=key_id, tenant=tenant)
        await self.kv.create(batch.id, encoder.encode(record))
        return batch

    async def record(self, batch_id: str, *, latest: bool = False) -> tuple[BatchRecord, int]:
        """The record and its revision (for compare-and-set). A replicated bucket answers
        direct gets from any replica, one that is behind included; ``latest`` asks the
        stream's leader, for the revision a compare-and-set must name."""
        if not batch_id.startswith("batch_") or not _valid_key(batch_id):
            raise batch_not_found(batch_id)
        if latest and self._js is not None:
            try:
                msg = await self._js.get_last_msg(
                    f"KV_{self._bucket}", f"$KV.{self._bucket}.{batch_id}", direct=False
                )
            except NotFoundError:
                raise batch_not_found(batch_id) from None
            if not msg.data or msg.seq is None:
                raise batch_not_found(batch_id)
            return batch_decoder.decode(msg.data), msg.seq
        try:
            entry = await self.kv.get(batch_id)
        except KeyNotFoundError:
            raise batch_not_found(batch_id) from None
        if not entry.value or entry.revision is None:
            raise batch_not_found(batch_id)
        return batch_decoder.decode(entry.value), entry.revision

    async def get(self, batch_id: str, tenant: str | None = None) -> Batch:
        """The batch; another tenant's batch does not exist for ``tenant`` (404)."""
        record = (await self.record(batch_id))[0]
        if tenant is not None and record.tenant != tenant:
            raise batch_not_found(batch_id)
        return record.batch

    async def update(
        self, batch_id: str, change: Callable[[BatchRecord], BatchRecord | None]
    ) -> BatchRecord:
        """Apply ``change`` (None: leave as is) with compare-and-set, retrying on a race.
        After a conflict the record is read from the leader, and retries back off: a
        replica left behind by a node's crash once answered every read with an old
        revision, and the batch never finalized."""
        conflicts = 0
        while True:
            record, revision = await self.record(batch_id, latest=conflicts > 0)
            changed = change(record)
            if changed is None:
                return record
            try:
                await self.kv.update(batch_id, encoder.encode(changed), last=revision)
            except KeyWrongLastSequenceError:
                conflicts += 1
                await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * conflicts)))
                continue
            return changed

    async def ids(self) -> list[str]:
        """Every batch id, newest first."""
        try:
            keys = await self.kv.keys()
        except Exception as exc:  # nats-py raises NoKeysError on an empty bucket
            if type(exc).__name__ == "NoKeysError":
                return []
            raise
        return sorted((k for k in keys if k.startswith("batch_")), reverse=True)

    async def list(
        self, after: str | None = None, limit: int = 20, tenant: str | None = None
    ) -> BatchList:
        """OpenAI's cursor pagination: newest first, ``after`` the last id of a page."""
        if not 1 <= limit <= 100:
            raise InvalidRequest(
                400, "limit must be between 1 and 100.", param="limit", code="invalid_value"
            )
        ids = await self.ids()
        if after is not None:
            ids = [i for i in ids if i < after]
        page: list[Batch] = []
        for batch_id in ids:
            if len(page) > limit:
                break
            try:
                page.append(await self.get(batch_id, tenant))
            except BrokerError:  # deleted meanwhile, or another tenant's
                continue
        has_more = len(page) > limit
        page = page[:limit]
        return BatchList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=has_more,
        )

    async def cancel(self, batch_id: str) -> Batch:
        """Move the batch to ``cancelling``; the runner stops it and finalizes it."""

        def change(record: BatchRecord) -> BatchRecord | None:
            status = record.batch.status
            if status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                return None
            if status not in CANCELLABLE:
                raise InvalidRequest(
                    409,
                    f"Cannot cancel batch {batch_id}: its status is `{status.value}`.",
                    code="batch_not_cancellable",
                )
            record.batch.status = BatchStatus.CANCELLING
            record.batch.cancelling_at = int(time.time())
            return record

        return (await self.update(batch_id, change)).batch

    # ------------------------------------------------------------ checkpoints, resume

    async def checkpoint(self, batch_id: str) -> int:
        try:
            entry = await self.kv.get(f"ckpt.{batch_id}")
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def set_checkpoint(self, batch_id: str, lines: int) -> None:
        await self.kv.put(f"ckpt.{batch_id}", str(lines).encode())

    async def forget_checkpoint(self, batch_id: str) -> None:
        try:
            await self.kv.purge(f"ckpt.{batch_id}")
        except KeyNotFoundError:
            pass

    async def source(self, digest: str) -> bytes | None:
        """What a submitter remembered about a file with this content hash."""
        try:
            entry = await self.kv.get(f"src.{digest}")
        except KeyNotFoundError:
            return None
        return entry.value or None

    async def remember_source(self, digest: str, value: bytes) -> None:
        await self.kv.put(f"src.{digest}", value)


def is_terminal(batch: Batch) -> bool:
    return batch.status in TERMINAL


def _valid_key(key: str) -> bool:
    return all(c.isalnum() or c in "-_=" for c in key)
