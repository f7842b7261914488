"""Canaries: step a variant's share up on a schedule, roll it back when it does worse.

One process at a time judges every canary (a lease, ``judge``, in the experiments
bucket, as batchers lease batches); any ingress may be it. Every ``check_s`` it reads
the canary's and the baseline's counters over the last ``window_s`` (from every
ingress, broker/experiments/stats.py). Once the canary has ``min_requests`` in the
window, an error rate above the baseline's plus ``max_error_rate_increase``, or a p95
above the baseline's times ``1 + max_p95_increase``, rolls it back to 0%. Otherwise,
``step_s`` after its last step, it moves to the next. Each change is an event in the
experiment's state (KV, compare-and-set), which every ingress follows.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.experiments import stats
from broker.nats.lease import KVLease, new_owner
from broker.nats.subjects import Subjects
from broker.nats.tasks import cancel_and_wait
from schemas.config import CanaryConfig, Config, ExperimentConfig
from schemas.experiments import CanaryEvent, CanaryState, VariantReport, canary_decoder

log = logging.getLogger(__name__)

JUDGE_KEY = "judge"
JUDGE_TTL_S = 15.0


def verdict(canary: CanaryConfig, trial: VariantReport, baseline: VariantReport) -> str | None:
    """Why the canary must be rolled back, or None."""
    if trial.requests < canary.min_requests:
        return None
    allowed = baseline.error_rate + canary.max_error_rate_increase
    if trial.error_rate > allowed:
        return (
            f"error rate {trial.error_rate:.1%} over {trial.requests} requests, above the "
            f"baseline's {baseline.error_rate:.1%} + {canary.max_error_rate_increase:.1%}"
        )
    if trial.p95_ms is not None and baseline.p95_ms is not None:
        limit = baseline.p95_ms * (1 + canary.max_p95_increase)
        if trial.p95_ms > limit:
            return (
                f"p95 latency {trial.p95_ms:.0f} ms, above the baseline's "
                f"{baseline.p95_ms:.0f} ms + {canary.max_p95_increase:.0%}"
            )
    return None


def advanced(
    experiment: ExperimentConfig, state: CanaryState | None, now: float, why: str | None
) -> CanaryState | None:
    """The canary's next state, or None when nothing changes."""
    canary = experiment.canary
    assert canary is not None
    if state is None:
        first = canary.steps[0]
        return CanaryState(
            started_at=now,
            stepped_at=now,
            events=[CanaryEvent(at=now, kind="started", share=first)],
        )
    if state.rolled_back_at is not None or state.completed_at is not None:
        return None
    if why is not None:
        state.rolled_back_at, state.reason = now, why
        state.events.append(CanaryEvent(at=now, kind="rolled_back", share=0, detail=why))
        return state
    if now - state.stepped_at < canary.step_s:
        return None
    if state.step + 1 < len(canary.steps):
        state.step += 1
        state.stepped_at = now
        share = canary.steps[state.step]
        state.events.append(CanaryEvent(at=now, kind="step", share=share))
        return state
    state.completed_at = now
    state.events.append(CanaryEvent(at=now, kind="completed", share=canary.steps[-1]))
    return state


class CanaryJudge:
    """Judges and steps every canary of the config while it holds the judge lease."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, config: Config) -> None:
        self._js, self._kv, self._config = js, kv, config
        self._subjects = Subjects.of(config)
        self._canaries = [e for e in config.experiments if e.canary is not None]
        self._lease = KVLease(kv, JUDGE_KEY, new_owner(), JUDGE_TTL_S)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._canaries:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._lease.held:
            await self._lease.release()

    async def _loop(self) -> None:
        period = min(c.canary.check_s for c in self._canaries if c.canary is not None)
        while True:
            try:
                if await self._lease.acquire():  # taken, or renewed: ours for a TTL more
                    for experiment in self._canaries:
                        await self.judge(experiment)
            except Exception as exc:  # NATS away: judge at the next round
                log.warning("canary judge: %s", exc)
            await asyncio.sleep(period)

    async def judge(self, experiment: ExperimentConfig, now: float | None = None) -> None:
        canary = experiment.canary
        assert canary is not None
        now = time.time() if now is None else now
        state, revision = await read_state(self._kv, experiment.name)
        why = None
        if state is not None and state.rolled_back_at is None:
            baseline = next(v for v in experiment.variants if v != canary.variant)
            reports = await stats.read(
                self._js,
                self._subjects,
                experiment.name,
                [canary.variant, baseline],
                since=max(state.stepped_at, now - canary.window_s),
            )
            why = verdict(canary, reports[canary.variant], reports[baseline])
        changed = advanced(experiment, state, now, why)
        if changed is None:
            return
        try:
            await write_state(self._kv, experiment.name, changed, revision)
        except KeyWrongLastSequenceError:
            return  # changed meanwhile (an operator's rollback): judged again next round
        event = changed.events[-1]
        level = logging.WARNING if event.kind == "rolled_back" else logging.INFO
        log.log(
            level,
            "experiment %s: canary %s %s at %d%%%s",
            experiment.name,
            canary.variant,
            event.kind.replace("_", " "),
            event.share,
            f": {event.detail}" if event.detail else "",
        )


async def read_state(kv: KeyValue, name: str) -> tuple[CanaryState | None, int | None]:
    """An experiment's canary state and its revision (None, None: not started)."""
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None, None
    if not entry.value:
        return None, entry.revision
    return canary_decoder.decode(entry.value), entry.revision


async def write_state(kv: KeyValue, name: str, state: CanaryState, revision: int | None) -> None:
    """Compare-and-set on ``revision`` (None: create); KeyWrongLastSequenceError when
    another process changed it first."""
    value = msgspec.json.encode(state)
    if revision is None:
        await kv.create(name, value)
    else:
        await kv.update(name, value, last=revision)


async def roll_back(kv: KeyValue, experiment: ExperimentConfig, reason: str) -> CanaryState:
    """An operator's rollback (the admin API, the CLI): the canary goes to 0% now."""
    for _ in range(16):
        found, revision = await read_state(kv, experiment.name)
        state = found or CanaryState(started_at=time.time())
        if state.rolled_back_at is not None:
            return state
        now = time.time()
        state.rolled_back_at, state.reason = now, reason
        state.events.append(CanaryEvent(at=now, kind="rolled_back", share=0, detail=reason))
        try:
            await write_state(kv, experiment.name, state, revision)
            return state
        except KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"experiment {experiment.name}: rollback kept conflicting")
