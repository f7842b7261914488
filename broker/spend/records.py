"""Writing and reading spend-log records (schemas/spend.py).

Written by whichever process ends a request (the worker that answered it, the ingress
for an answer from the cache), added to the usage recorder's next batch: no I/O on the
request path, and one stored message per key and batch (its records a line each), not
one per request. Read back through an ephemeral consumer on the spend stream, filtered by
tenant and key on the subject, by model and time in memory, a page at a time; the
cursor is the stream sequence after the page's last record.
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker.nats.subjects import Subjects
from broker.tenancy.usage import UsageRecorder
from schemas.spend import SpendRecord, spend_decoder, spend_encoder

MAX_PAGE = 1000
FETCH = 256


def record(recorder: UsageRecorder, subjects: Subjects, entry: SpendRecord) -> None:
    recorder.add_record(subjects.spend(entry.tenant, entry.key_id), spend_encoder.encode(entry))


async def read(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    tenant: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    since: float | None = None,
    after: int = 0,
    limit: int = 100,
) -> tuple[list[SpendRecord], int | None]:
    """A page of records, oldest first, and the cursor of the next page (None: the end).
    A message holds the records of one key from one batch; a page ends with a whole
    message, so it can hold a few more than ``limit``."""
    stream = subjects.spend_stream
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return [], None
    last = info.state.last_seq if info.state else 0
    if after >= last:
        return [], None
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        filter_subject=subjects.spend_filter(tenant, key_id),
        inactive_threshold=10.0,
        mem_storage=True,
    )
    if after:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, after + 1
    elif since is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.datetime.fromtimestamp(since, datetime.UTC)
    else:
        config.deliver_policy = DeliverPolicy.ALL
    sub = await js.pull_subscribe(config.filter_subject or "", stream=stream, config=config)
    page: list[SpendRecord] = []
    seq = after
    try:
        while len(page) < limit and seq < last:
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0)
            except TimeoutError:
                break
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                for line in msg.data.split(b"\n"):
                    try:
                        entry = spend_decoder.decode(line)
                    except msgspec.DecodeError:
                        continue
                    if (model is None or entry.model == model) and (
                        since is None or entry.at >= since
                    ):
                        entry.seq = seq
                        page.append(entry)
                if len(page) >= limit:
                    break  # whole messages only: the cursor is a message's sequence
            if (await sub.consumer_info()).num_pending == 0:
                seq = last  # nothing more in this filter
    finally:
        await sub.unsubscribe()
    more = len(page) >= limit and page[-1].seq < last
    return page, page[-1].seq if more else None


COLUMNS = [f for f in SpendRecord.__struct_fields__ if f != "seq"]


def as_jsonl(entries: Iterable[SpendRecord]) -> bytes:
    return b"".join(spend_encoder.encode(e) + b"\n" for e in entries)


def as_csv(entries: Iterable[SpendRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for entry in entries:
        writer.writerow([getattr(entry, c) for c in COLUMNS])
    return out.getvalue()
