"""Batch files in the Object Store: a download cut off mid-way goes on where it was."""

from __future__ import annotations

import io
import os

import pytest

from broker.batches.files import FileStore
from schemas.config import Config, NatsConfig
from tests import bus


async def test_a_read_cut_off_mid_file_goes_on_from_the_next_chunk(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(model_list=[], nats=NatsConfig(url=nats_url, subject_prefix="files-t"))
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        files = await FileStore.open(js, config)
        content = os.urandom(12 * 128 * 1024 + 1000)  # 13 chunks
        stored = await files.put(io.BytesIO(content), "big.jsonl", "batch")
        stream = "OBJ_files-t_files"
        received: list[bytes] = []
        cuts = 0
        async for chunk in files.chunks(stored.id):
            received.append(chunk)
            if len(received) == 3:  # the server forgets the reader's consumer
                for consumer in await js.consumers_info(stream):
                    await js.delete_consumer(stream, consumer.name)
                    cuts += 1
        assert cuts == 1
        resumed = [r.getMessage() for r in caplog.records if "reading on" in r.getMessage()]
        assert resumed == [resumed[0]] and "from chunk 8" in resumed[0]  # 8 were fetched
        assert b"".join(received) == content  # nothing repeated, nothing missing
        assert len(received) == 13
        assert await js.consumers_info(stream) == []  # no consumer left behind
    finally:
        await nc.close()
