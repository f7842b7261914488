"""broker/tenancy/usage.py: which counters a settled request waits for, on real
JetStream counters."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from broker.nats.subjects import Subjects
from broker.tenancy.usage import (
    BUDGET_PERIODS,
    QUOTA_PERIODS,
    UsageRecorder,
    aggregate,
    read_counter,
)
from tests import bus

AT = time.time()
USAGE: dict[str, Any] = {
    "tenant": "acme",
    "key_id": "key_a",
    "model": "m",
    "deployment": "d",
    "prompt_tokens": 3,
    "completion_tokens": 4,
    "cost_usd": 0.000002,  # 2,000 nano-USD
    "at": AT,
}


@pytest.fixture
async def ledger(nats_url: str) -> AsyncIterator[tuple[NATS, str, Subjects]]:
    nc = await bus.connect(nats_url)
    prefix = f"u{uuid.uuid4().hex[:8]}"
    stream = prefix.upper()
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[f"{prefix}.usage.>"],
            allow_msg_counter=True,
            allow_direct=True,
            max_msgs_per_subject=1,
        )
    )
    yield nc, stream, Subjects(prefix)
    await js.delete_stream(stream)
    await nc.close()


async def _stored(nc: NATS, stream: str, subjects: list[str]) -> dict[str, int]:
    js = nc.jetstream()
    return {subject: await read_counter(js, stream, subject) for subject in subjects}


def _aggregates(s: Subjects) -> tuple[list[str], list[str]]:
    costs = [
        aggregate(s, scope, ident, p, AT, "cost")
        for scope, ident in (("key", "key_a"), ("tenant", "acme"))
        for p in BUDGET_PERIODS
    ]
    tokens = [aggregate(s, "tenant", "acme", p, AT, "tokens") for p in QUOTA_PERIODS]
    return costs, tokens


async def test_a_request_waits_only_for_what_its_budgets_read(
    ledger: tuple[NATS, str, Subjects],
) -> None:
    nc, stream, s = ledger
    recorder = UsageRecorder(nc, s.prefix)
    costs, tokens = _aggregates(s)
    daily_key, daily_tenant = costs[0], costs[2]
    hold = s.usage_hold("key", "key_a", "d", "cost")
    await recorder.record_now({hold: -5}, frozenset({daily_key, daily_tenant}), **USAGE)
    # stored before it returned: the budgets' aggregates and the released hold
    assert await _stored(nc, stream, [daily_key, daily_tenant, hold]) == {
        daily_key: 2000,
        daily_tenant: 2000,
        hold: -5,
    }
    others = [costs[1], costs[3], *tokens]
    assert set((await _stored(nc, stream, others)).values()) == {0}  # with the next batch
    await recorder.flush()
    stored = await _stored(nc, stream, others)
    assert stored == {**dict.fromkeys([costs[1], costs[3]], 2000), **dict.fromkeys(tokens, 7)}


async def test_without_a_watch_list_every_aggregate_is_stored_first(
    ledger: tuple[NATS, str, Subjects],
) -> None:
    nc, stream, s = ledger
    recorder = UsageRecorder(nc, s.prefix)
    costs, tokens = _aggregates(s)
    await recorder.record_now(None, None, **USAGE)
    stored = await _stored(nc, stream, [*costs, *tokens])
    assert stored == {**dict.fromkeys(costs, 2000), **dict.fromkeys(tokens, 7)}


async def test_nothing_watched_and_nothing_held_waits_for_nothing(
    ledger: tuple[NATS, str, Subjects],
) -> None:
    nc, stream, s = ledger
    recorder = UsageRecorder(nc, s.prefix)
    costs, tokens = _aggregates(s)
    await recorder.record_now({}, frozenset(), **USAGE)
    assert recorder._urgent_flusher is None  # no group was started
    await recorder.flush()
    assert set((await _stored(nc, stream, [*costs, *tokens])).values()) == {2000, 7}
