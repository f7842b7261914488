"""Per-deployment circuit breakers whose state every worker process shares.

Counting is local: each process counts its own consecutive failures and its failure
rate over a sliding window. State is shared: a transition is written to the JetStream
KV bucket ``pb_breakers`` and every process follows the bucket, so a breaker opened by
one process is open for all. Transitions that must happen once (open -> half-open,
half-open -> closed) use the KV's compare-and-set; the process that moves a breaker to
half-open owns it and runs the probes, the others keep not pulling.

    closed --(N consecutive failures, or error rate over the window)--> open
    open --(cool-down elapsed)--> half_open   (owner lets `half_open_probes` through)
    half_open --(M successes)--> closed;  half_open --(a failure)--> open

An operator can force a breaker open (it stays open until forced closed) or reset it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.nats.subjects import breaker_key
from broker.routing.breaker_board import BreakerRecords
from schemas.config import BreakerConfig
from schemas.state import BreakerRecord, BreakerState
from workers.outcome_window import OutcomeWindow

log = logging.getLogger(__name__)


_encoder = msgspec.json.Encoder()


class CircuitBreaker:
    def __init__(
        self,
        deployment: str,
        config: BreakerConfig,
        owner_id: str,
        kv: KeyValue | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` tells wall-clock seconds (a record's ``since`` is shared between
        processes); tests pass one they move by hand instead of sleeping."""
        self.deployment = deployment
        self._clock = clock
        self.config = config
        self.record = BreakerRecord(deployment=deployment)
        self._owner_id = owner_id
        self._kv = kv
        self._key = breaker_key(deployment)
        self._revision: int | None = None
        self._on_change = on_change
        self._window = OutcomeWindow(config.window_s)
        self.consecutive_failures = 0
        self.requests = 0
        self.failures = 0
        self._probe_successes = 0
        self._probes_running = 0
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        return self.record.state

    def slots(self, capacity: int) -> int:
        """How many requests this process may run at once for the deployment now."""
        record = self.record
        if record.state is BreakerState.CLOSED:
            return capacity
        if record.state is BreakerState.HALF_OPEN and record.owner == self._owner_id:
            return min(capacity, self.config.half_open_probes)
        return 0

    def allows(self) -> bool:
        """May one more request go to the provider (checked per request)?"""
        record = self.record
        if record.state is BreakerState.CLOSED:
            return True
        if record.state is BreakerState.HALF_OPEN and record.owner == self._owner_id:
            return self._probes_running < self.config.half_open_probes
        return False

    def retry_after(self) -> float:
        """Seconds until the breaker will be probed again (0 when it lets requests through)."""
        if self.record.state is BreakerState.CLOSED:
            return 0.0
        return max(1.0, self.record.since + self.config.cooldown_s - self._clock())

    def error_rate(self) -> float:
        return self._window.rate(self._clock())

    # ------------------------------------------------------------ recording

    def begin(self) -> None:
        if self.record.state is BreakerState.HALF_OPEN:
            self._probes_running += 1

    def abandon(self) -> None:
        """A call that ended without an outcome (cancelled) gives back its probe slot."""
        if self.record.state is BreakerState.HALF_OPEN:
            self._probes_running = max(0, self._probes_running - 1)

    def record_success(self) -> None:
        """Count a success; synchronous, as it is on every request's path."""
        self.requests += 1
        self._window.add(failed=False, now=self._clock())
        self.consecutive_failures = 0
        if self.record.state is BreakerState.HALF_OPEN and self.record.owner == self._owner_id:
            self._probes_running = max(0, self._probes_running - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.config.success_threshold:
                task = asyncio.ensure_future(
                    self._transition(BreakerState.CLOSED, "probes succeeded")
                )
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def record_failure(self, reason: str) -> None:
        self.requests += 1
        self._window.add(failed=True, now=self._clock())
        self.failures += 1
        self.consecutive_failures += 1
        state = self.record.state
        if state is BreakerState.HALF_OPEN:
            self._probes_running = max(0, self._probes_running - 1)
            if self.record.owner == self._owner_id:
                await self._transition(BreakerState.OPEN, f"probe failed: {reason}")
            return
        if state is BreakerState.OPEN:
            return
        cfg = self.config
        if self.consecutive_failures >= cfg.failure_threshold:
            await self._transition(
                BreakerState.OPEN, f"{self.consecutive_failures} consecutive failures: {reason}"
            )
        else:
            total, failed = self._window.counts(self._clock())
            if total >= cfg.min_requests and failed / total >= cfg.error_rate:
                await self._transition(
                    BreakerState.OPEN,
                    f"error rate {failed / total:.0%} over {cfg.window_s:.0f}s: {reason}",
                )

    # ------------------------------------------------------------ transitions

    async def tick(self) -> None:
        """Time-driven transitions: open -> half-open after the cool-down, and taking over
        a half-open breaker whose owner went silent."""
        record = self.record
        if record.forced:
            return
        elapsed = self._clock() - record.since
        if record.state is BreakerState.OPEN and elapsed >= self.config.cooldown_s:
            await self._transition(BreakerState.HALF_OPEN, "cool-down elapsed")
        elif (
            record.state is BreakerState.HALF_OPEN
            and record.owner != self._owner_id
            and elapsed >= 3 * self.config.cooldown_s
        ):
            await self._transition(BreakerState.HALF_OPEN, "probe owner went silent")

    async def _transition(self, state: BreakerState, reason: str) -> None:
        async with self._lock:
            if self.record.forced:
                return
            previous = self.record.state  # the watch may apply our own write before we log
            record = BreakerRecord(
                deployment=self.deployment,
                state=state,
                since=self._clock(),
                reason=reason,
                owner=self._owner_id if state is BreakerState.HALF_OPEN else "",
            )
            if self._kv is not None:
                # Always against the revision we last saw: a plain put could overwrite
                # an operator's forced open written since (its watch not yet applied).
                try:
                    if self._revision is not None:
                        revision = await self._kv.update(
                            self._key, _encoder.encode(record), last=self._revision
                        )
                    else:
                        revision = await self._kv.create(self._key, _encoder.encode(record))
                except KeyWrongLastSequenceError:
                    return  # another process moved it first; its record arrives by the watch
                self._revision = revision
            log.warning("breaker %s: %s -> %s (%s)", self.deployment, previous, state, reason)
            self._apply(record)

    def adopt(self, record: BreakerRecord, revision: int | None) -> None:
        """A record seen in the shared bucket (ours or another process's)."""
        if self._revision is not None and revision is not None and revision < self._revision:
            return
        self._revision = revision
        if (record.state, record.since, record.owner) != (
            self.record.state,
            self.record.since,
            self.record.owner,
        ):
            self._apply(record)

    def _apply(self, record: BreakerRecord) -> None:
        changed = record.state is not self.record.state
        self.record = record
        if changed:
            self._probe_successes = 0
            self._probes_running = 0
            if record.state is BreakerState.CLOSED:
                self.consecutive_failures = 0
                self._window.clear()
        if self._on_change is not None:
            self._on_change()


class BreakerBoard:
    """The breakers of one worker process, kept in step with ``pb_breakers``."""

    def __init__(self, kv: KeyValue | None, owner_id: str) -> None:
        self._kv = kv
        self._owner_id = owner_id
        self.breakers: dict[str, CircuitBreaker] = {}  # the deployments served here
        self.shared = BreakerRecords(kv) if kv is not None else None
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        if self.shared is not None:
            self.shared.listen(self._on_record)

    def add(self, deployment: str, config: BreakerConfig) -> CircuitBreaker:
        breaker = CircuitBreaker(deployment, config, self._owner_id, self._kv, self._changed)
        self.breakers[breaker_key(deployment)] = breaker
        return breaker

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after any breaker, here or elsewhere, changed state."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _on_record(self, key: str, record: BreakerRecord | None, revision: int | None) -> None:
        breaker = self.breakers.get(key)
        if breaker is None:
            self._changed()  # another deployment: failover and bypass decisions may change
            return
        breaker.adopt(record or BreakerRecord(deployment=breaker.deployment), revision)

    def state(self, deployment: str) -> BreakerState:
        """The breaker's state as this process knows it (its own, else the shared one)."""
        breaker = self.breakers.get(breaker_key(deployment))
        if breaker is not None:
            return breaker.state
        return self.shared.state(deployment) if self.shared is not None else BreakerState.CLOSED

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            for breaker in self.breakers.values():
                try:
                    await breaker.tick()
                except Exception as exc:  # NATS away: try again next tick
                    log.debug("breaker tick failed: %s", exc)

    async def stop(self) -> None:
        if self.shared is not None:
            await self.shared.stop()
        if self._task:
            self._task.cancel()
