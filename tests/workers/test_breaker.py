"""The breaker's state machine on its own (no KV): thresholds, window, probes, operator."""

from __future__ import annotations

import asyncio
import time

from schemas.config import BreakerConfig
from schemas.state import BreakerRecord, BreakerState
from workers.breaker import CircuitBreaker


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def _settle() -> None:
    """Let the tasks the breaker started (a closing transition) run: no time passes."""
    for _ in range(3):
        await asyncio.sleep(0)


def breaker(clock: Clock | None = None, **config: float) -> CircuitBreaker:
    return CircuitBreaker(
        "dep",
        BreakerConfig(**config),  # type: ignore[arg-type]
        owner_id="me",
        clock=clock or Clock(),
    )


async def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(failure_threshold=3, min_requests=1000)
    await b.record_failure("x")
    await b.record_failure("x")
    b.record_success()  # resets the run
    await b.record_failure("x")
    await b.record_failure("x")
    assert b.state is BreakerState.CLOSED
    await b.record_failure("x")
    assert b.state is BreakerState.OPEN
    assert b.slots(10) == 0 and not b.allows()
    assert "3 consecutive failures" in b.record.reason


async def test_opens_on_error_rate_over_the_window() -> None:
    b = breaker(failure_threshold=100, min_requests=10, error_rate=0.5, window_s=30)
    for _ in range(5):
        b.record_success()
        await b.record_failure("x")
    assert b.state is BreakerState.OPEN  # 5 of 10 failed, never 2 in a row
    assert "error rate 50%" in b.record.reason


async def test_needs_min_requests_for_the_rate() -> None:
    b = breaker(failure_threshold=100, min_requests=10, error_rate=0.5)
    for _ in range(4):
        await b.record_failure("x")
        b.record_success()
    assert b.state is BreakerState.CLOSED


async def test_half_open_after_cooldown_probes_bounded_and_closes() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, cooldown_s=30, half_open_probes=2, success_threshold=2)
    await b.record_failure("x")
    assert b.state is BreakerState.OPEN
    clock.advance(29.9)
    await b.tick()
    assert b.state is BreakerState.OPEN  # cool-down not over
    clock.advance(0.2)
    await b.tick()
    assert b.state is BreakerState.HALF_OPEN and b.record.owner == "me"
    assert b.slots(10) == 2
    b.begin()
    b.begin()
    assert not b.allows()  # two probes running: no third
    b.record_success()
    assert b.state is BreakerState.HALF_OPEN
    b.record_success()
    await _settle()  # the closing transition runs as its own task
    assert b.state is BreakerState.CLOSED and b.slots(10) == 10


async def test_probe_failure_reopens() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, cooldown_s=5)
    await b.record_failure("x")
    clock.advance(5)
    await b.tick()
    b.begin()
    await b.record_failure("still down")
    assert b.state is BreakerState.OPEN and "probe failed" in b.record.reason


def test_half_open_owned_elsewhere_takes_nothing() -> None:
    b = breaker()
    b.adopt(
        BreakerRecord(
            deployment="dep", state=BreakerState.HALF_OPEN, since=time.time(), owner="other"
        ),
        5,
    )
    assert b.slots(10) == 0 and not b.allows()


async def test_forced_open_ignores_cooldown_and_successes() -> None:
    clock = Clock()
    b = breaker(clock, cooldown_s=5)
    b.adopt(BreakerRecord(deployment="dep", state=BreakerState.OPEN, since=clock(), forced=True), 7)
    clock.advance(60)
    await b.tick()
    assert b.state is BreakerState.OPEN
    b.adopt(BreakerRecord(deployment="dep", state=BreakerState.CLOSED, since=time.time()), 8)
    assert b.state is BreakerState.CLOSED


async def test_retry_after_reports_the_cooldown_left() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    assert b.retry_after() == 0.0
    await b.record_failure("x")
    assert b.retry_after() == 10
    clock.advance(4)
    assert b.retry_after() == 6
    clock.advance(5.5)
    assert b.retry_after() == 1.0  # never promises less than a second


def test_outcome_window_forgets_old_buckets() -> None:
    from workers.outcome_window import OutcomeWindow

    window = OutcomeWindow(window_s=3)
    window.add(failed=True, now=100.2)
    window.add(failed=False, now=101.5)
    window.add(failed=False, now=102.9)
    assert window.counts(now=102.9) == (3, 1)
    assert window.counts(now=103.1) == (2, 0)  # the bucket of second 100 left the window
    assert window.rate(now=200.0) == 0.0
    window.add(failed=True, now=200.0)
    assert window.counts(now=200.5) == (1, 1)  # a reused slot starts from zero


class _EchoingBucket:
    """A KV bucket whose watch delivers our own write before ``put`` returns, as the
    real one can: the transition's log line must still name the state it left."""

    def __init__(self) -> None:
        self.breaker: CircuitBreaker | None = None
        self.revision = 0

    async def put(self, key: str, value: bytes) -> int:
        import msgspec

        self.revision += 1
        assert self.breaker is not None
        self.breaker.adopt(msgspec.json.decode(value, type=BreakerRecord), self.revision)
        return self.revision

    async def create(self, key: str, value: bytes) -> int:
        assert self.revision == 0
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        assert last == self.revision
        return await self.put(key, value)


async def test_transition_logs_name_the_previous_state(caplog) -> None:  # type: ignore[no-untyped-def]
    bucket = _EchoingBucket()
    b = CircuitBreaker(
        "dep",
        BreakerConfig(failure_threshold=1, cooldown_s=0.01),
        owner_id="me",
        kv=bucket,  # type: ignore[arg-type]
    )
    bucket.breaker = b
    with caplog.at_level("WARNING", logger="workers.breaker"):
        await b.record_failure("x")
    assert b.state is BreakerState.OPEN
    assert "closed -> open" in caplog.text
    assert "open -> open" not in caplog.text


async def test_the_error_rate_window_slides_with_the_clock() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, min_requests=4, error_rate=0.5, window_s=10)
    for _ in range(3):
        await b.record_failure("x")
    clock.advance(11)  # those three left the window
    b.record_success()
    await b.record_failure("x")
    assert b.state is BreakerState.CLOSED and b.error_rate() == 0.5
    await b.record_failure("x")
    b.record_success()
    await b.record_failure("x")  # 3 of 5 within the last 10 s
    assert b.state is BreakerState.OPEN and "error rate 60%" in b.record.reason


async def test_a_worker_s_transition_never_overwrites_a_forced_open(nats_url: str) -> None:
    """An operator forces the breaker open while a worker, which has not seen that
    record yet, opens it on its own: the forced record stays (the write is a
    compare-and-set against what the worker last saw)."""
    import uuid

    import msgspec
    from nats.js.api import KeyValueConfig

    from broker.nats.subjects import breaker_key
    from tests import bus

    nc = await bus.connect(nats_url)
    try:
        kv = await nc.jetstream().create_key_value(
            KeyValueConfig(bucket=f"breakers_{uuid.uuid4().hex[:8]}")
        )
        b = CircuitBreaker("dep", BreakerConfig(failure_threshold=1), owner_id="worker-1", kv=kv)
        forced = BreakerRecord(
            deployment="dep", state=BreakerState.OPEN, reason="by an operator", forced=True
        )
        await kv.put(breaker_key("dep"), msgspec.json.encode(forced))  # not yet watched
        await b.record_failure("x")
        stored = await kv.get(breaker_key("dep"))
        assert msgspec.json.decode(stored.value or b"", type=BreakerRecord).forced is True
    finally:
        await nc.close()
