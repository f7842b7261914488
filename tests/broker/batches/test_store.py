"""Batch records in KV (broker/batches/store.py): concurrent compare-and-set updates
all land, the retries reading the leader's revision."""

from __future__ import annotations

import asyncio
import io

import msgspec

from broker.batches.store import BatchStore
from schemas.batch import BatchCreate
from schemas.config import Config, NatsConfig
from tests import bus


async def test_concurrent_updates_all_land(nats_url: str) -> None:
    config = Config(model_list=[], nats=NatsConfig(url=nats_url, subject_prefix="store-t"))
    nc = await bus.connect(nats_url)
    try:
        store = await BatchStore.open(nc.jetstream(), config)
        stored = await store.files.put(io.BytesIO(b"{}\n"), "in.jsonl", "batch")
        batch = await store.create(
            BatchCreate(
                input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        )

        def one_more(record):  # type: ignore[no-untyped-def]
            counts = record.batch.request_counts
            counts = msgspec.structs.replace(counts, completed=counts.completed + 1)
            batch_ = msgspec.structs.replace(record.batch, request_counts=counts)
            return msgspec.structs.replace(record, batch=batch_)

        await asyncio.gather(*(store.update(batch.id, one_more) for _ in range(20)))
        latest, revision = await store.record(batch.id, latest=True)
        assert latest.batch.request_counts.completed == 20
        assert (await store.record(batch.id))[1] == revision  # the same, read directly
    finally:
        await nc.close()
