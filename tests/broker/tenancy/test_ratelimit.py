"""GCRA buckets on a real KV bucket, and the ledger's period arithmetic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.js.api import KeyValueConfig

from broker.tenancy.leases import SHARE
from broker.tenancy.ratelimit import Bucket, RateLimiter
from broker.tenancy.usage import period_end, period_key
from tests import bus


@pytest.fixture
async def limiter(nats_url: str) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    nc = await bus.connect(nats_url)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=f"rl_{uuid.uuid4().hex}"))
    yield RateLimiter(kv), RateLimiter(kv)  # two "processes" sharing one bucket
    await nc.close()


async def test_burst_then_refusal_with_retry_after(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    one, two = limiter
    bucket = Bucket("k.rpm", "requests", limit=60, burst=3)  # 1/s, holds 3
    decisions = [await (one if i % 2 else two).take(bucket, 1) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 0.9 < decisions[3].retry_after_s <= 1.0  # the next unit arrives within a second
    await asyncio.sleep(decisions[3].retry_after_s + 0.05)
    assert (await one.take(bucket, 1)).allowed


async def test_adjust_gives_back_and_take_all_is_all_or_nothing(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    one, two = limiter
    tokens = Bucket("k.tpm", "tokens", limit=600, burst=100)
    assert (await one.take(tokens, 90)).allowed
    assert not (await two.take(tokens, 50)).allowed
    one.adjust(tokens, -60)  # the request used 30, not 90: kept in one's lease ...
    await one.flush(everything=True)  # ... and written back with it
    assert (await two.take(tokens, 50)).allowed
    requests = Bucket("k2.rpm", "requests", limit=60, burst=5)
    decisions = await one.take_all([(requests, 1), (tokens, 100)])
    assert [d.allowed for d in decisions] == [True, False]
    assert (await two.take(requests, 5)).allowed  # the refused call took nothing


async def test_a_hot_key_taken_concurrently_counts_every_take_exactly(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    """Hundreds of requests of one key at once, from two processes: none fails for
    contention, and every unit of the burst is either admitted or held in a lease: no
    more is ever admitted than the limit."""
    one, two = limiter
    bucket = Bucket("hot.rpm", "requests", limit=60, burst=150)
    takes = [(one if i % 2 else two).take(bucket, 1) for i in range(400)]
    decisions = await asyncio.gather(*takes)
    admitted = sum(d.allowed for d in decisions)
    assert admitted + one.leased(bucket) + two.leased(bucket) == 150
    assert admitted >= 150 - 150 // SHARE  # a lease takes at most 1/SHARE of what is left
    for _ in range(50):
        one.adjust(bucket, -1)  # given back
    await one.flush(everything=True)
    await two.flush(everything=True)
    again = await asyncio.gather(*(two.take(bucket, 1) for _ in range(200)))
    assert sum(d.allowed for d in again) + two.leased(bucket) == 150 - admitted + 50


async def test_a_hot_key_is_admitted_from_its_lease_without_io(
    limiter: tuple[RateLimiter, RateLimiter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Far from its limit, a key busy in one process is admitted from memory: the
    writes to the shared bucket grow rarer as the lease doubles (one per 2^n takes),
    and another process still sees every unit taken."""
    one, two = limiter
    bucket = Bucket("busy.rpm", "requests", limit=60, burst=1_000_000)  # refills 1/s
    writes = 0
    write = one._write

    async def counted(key: str, tat: float, revision: int | None) -> bool:
        nonlocal writes
        writes += 1
        return await write(key, tat, revision)

    monkeypatch.setattr(one, "_write", counted)
    for _ in range(2000):
        assert (await one.take(bucket, 1)).allowed
    await asyncio.gather(*one._topping.values())
    assert writes <= 15  # 1 + 1 + 2 + 4 ... : log2(2000) renewals, some topped up at half
    await one.flush(everything=True)  # the unused rest goes back
    assert one.leased(bucket) == 0
    remaining = (await two.take(bucket, 1)).remaining
    assert 1_000_000 - 2001 <= remaining <= 1_000_000 - 2001 + 5  # + what refilled


async def test_takes_from_leases_are_all_or_nothing(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    """The synchronous path admission tries first: every bucket from its lease (with the
    bucket's state as the answer), or none touched."""
    one, _ = limiter
    rpm = Bucket("sync.rpm", "requests", limit=60, burst=1_000_000)
    tpm = Bucket("sync.tpm", "tokens", limit=600, burst=1_000_000)
    assert one.take_leased([(rpm, 1)]) is None  # nothing leased yet
    for _ in range(20):  # renewed quickly: the lease grows past one request
        assert (await one.take(rpm, 1)).allowed
        if one.leased(rpm) >= 1:
            break
    leased = one.leased(rpm)
    assert leased >= 1
    assert one.take_leased([(rpm, 1), (tpm, 10)]) is None  # tpm has no lease ...
    assert one.leased(rpm) == leased  # ... so rpm gave nothing
    [decision] = one.take_leased([(rpm, 1)]) or []
    assert decision.allowed and decision.bucket == rpm
    assert one.leased(rpm) == leased - 1
    assert one.take_leased([(rpm, leased)]) is None and one.leased(rpm) == leased - 1


async def test_a_rebuilt_bucket_keeps_its_lease_and_a_changed_limit_does_not(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    """Admission plans are rebuilt every second: an equal bucket is the same bucket, one
    with another limit is not served from the old lease."""
    one, _ = limiter
    rpm = Bucket("again.rpm", "requests", limit=60, burst=1_000_000)
    for _ in range(20):
        assert (await one.take(rpm, 1)).allowed
        if one.leased(rpm) >= 2:
            break
    leased = one.leased(rpm)
    rebuilt = Bucket("again.rpm", "requests", limit=60, burst=1_000_000)
    assert rebuilt is not rpm
    [decision] = one.take_leased([(rebuilt, 1)]) or []
    assert decision.allowed and one.leased(rpm) == leased - 1
    changed = Bucket("again.rpm", "requests", limit=30, burst=1_000_000)
    assert one.take_leased([(changed, 1)]) is None
    assert one.leased(rpm) == leased - 1


async def test_a_request_larger_than_the_burst_passes_only_on_a_full_bucket(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    one, _ = limiter
    bucket = Bucket("big.tpm", "tokens", limit=600, burst=100)
    assert (await one.take(bucket, 500)).allowed  # full: let it through, once
    assert not (await one.take(bucket, 500)).allowed


def test_periods_and_their_ends() -> None:
    at = datetime(2026, 12, 31, 23, 30, tzinfo=UTC).timestamp()
    assert period_key("hourly", at) == "h2026123123"
    assert period_key("daily", at) == "d20261231"
    assert period_key("weekly", at) == "w2026-53"
    assert period_key("monthly", at) == "m202612"
    assert period_key("never", at) == "all"
    new_year = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert period_end("hourly", at) == new_year
    assert period_end("daily", at) == new_year
    assert period_end("monthly", at) == new_year
    assert period_end("weekly", at) == datetime(2027, 1, 4, tzinfo=UTC).timestamp()  # Monday
    assert period_end("never", at) is None


async def test_a_lease_in_use_is_topped_up_before_it_runs_out(
    limiter: tuple[RateLimiter, RateLimiter],
) -> None:
    """A lease spent down to half is topped up in the background while it still admits:
    a steady stream of takes finds it empty only while it first grows, and the shared
    bucket still sees every unit."""
    one, two = limiter
    bucket = Bucket("steady.rpm", "requests", limit=60, burst=1_000_000)
    missed = []
    for _ in range(2000):
        leased = one.take_leased([(bucket, 1)])
        missed.append(leased is None)
        if leased is None:
            assert (await one.take(bucket, 1)).allowed
        await asyncio.sleep(0.0005)
    assert sum(missed[1000:]) == 0, sum(missed)  # none once it has grown
    await asyncio.gather(*one._topping.values())
    await one.flush(everything=True)
    remaining = (await two.take(bucket, 1)).remaining
    assert 1_000_000 - 2001 <= remaining <= 1_000_000 - 2001 + 5  # + what refilled
