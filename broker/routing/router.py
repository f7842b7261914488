"""Every "where does this request go": the first hop (``route``, for the client and the
ingress), the next one after a deployment failed it (``next_subject``, for failover and a
routed model's intake), and the deployment a strategy picks (``choose``).

A routed model's request goes straight to the queue of the deployment its strategy picks;
when none can be picked now, to the model's intake. A model that no live worker serves
hands its requests to its first served fallback. After a failure: another deployment of
the alias that has not failed the request and whose breaker is closed, then the alias's
``fallbacks`` in order (``context_window_fallbacks`` for a prompt too long for the model),
skipping aliases with no usable deployment.

Strategies (``model_list[].routing``):

- ``least-busy`` (default) is not done here: every deployment pulls from the alias's
  queue, so a deployment with free capacity simply takes the next request.
- ``weighted``: random, in proportion to ``weight``.
- ``round-robin``: in turn, per choosing process.
- ``lowest-latency``: the lowest latency EWMA reported by the workers; a deployment not
  measured yet is tried first, and 5% of choices explore, so estimates stay fresh.
- ``lowest-cost``: the lowest ``input_cost_per_mtok + output_cost_per_mtok``.

Only deployments with a live worker and a closed breaker are candidates, with one
exception, whatever the strategy: a half-open deployment gets one request (the probe
that can close its breaker) every ``PROBE_INTERVAL_S`` from each choosing process.
Otherwise nothing would ever be sent to it, and it would stay half-open for good; the
deployment's pool lets only ``half_open_probes`` of them through at once. Lowest-latency
and lowest-cost skip a deployment whose workers report it full (in-flight at capacity)
while another has room, so overflow spills to the next best instead of queueing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection

from broker.nats.subjects import Subjects
from broker.routing.presence import WorkerDirectory
from schemas.config import Config, DeploymentConfig, ModelConfig
from schemas.errors import model_not_found, no_worker, wrong_endpoint
from schemas.state import BreakerState, DeploymentStats

EXPLORE = 0.05
PROBE_INTERVAL_S = 1.0


class Router:
    def __init__(
        self,
        config: Config,
        subjects: Subjects,
        directory: WorkerDirectory,
        breaker_state: Callable[[str], BreakerState],
    ) -> None:
        self._config = config
        self._subjects = subjects
        self._directory = directory
        self._state = breaker_state
        self._turns: dict[str, int] = {}
        self._probed: dict[str, float] = {}  # deployment -> when it last got a probe

    def is_open(self, deployment: str) -> bool:
        """Not taking requests now: open, or half-open (only its prober sends to it)."""
        return self._state(deployment) is not BreakerState.CLOSED

    def route(
        self, model: str, mode: str = "chat", unable: tuple[str, ...] = ()
    ) -> tuple[str, tuple[str, ...]]:
        """Where to queue a new request for ``model``, and the deployments already passed
        over (``unable``: those that cannot serve it, broker/routing/capabilities.py);
        or the error the request gets instead."""
        config = self._config.model(model)
        if config is None:
            raise model_not_found(model)
        if config.mode != mode:
            raise wrong_endpoint(model, config.mode)
        if not self._directory.is_served(model):
            skipped = tuple(d.name for d in config.deployments)
            for fallback in config.fallbacks:
                if self._directory.is_served(fallback):
                    return self._subjects.queue(fallback, mode), skipped
            raise no_worker(model, self._directory.why_unserved(model))
        if config.routing != "least-busy":
            target = self.choose(config, exclude=unable)
            if target is not None:
                return self._subjects.dep(target.name), unable
        return self._subjects.queue(model, mode), unable

    def next_subject(
        self, model: ModelConfig, failed: Collection[str], *, context: bool = False
    ) -> str | None:
        """Where to queue a request next that the deployments in ``failed`` could not
        answer, or None when every option has failed it."""
        if not context:
            if model.routing == "least-busy":
                if self.usable(model, failed):
                    return self._subjects.queue(model.model_name, model.mode)
            else:
                target = self.choose(model, exclude=failed)
                if target is not None:
                    return self._subjects.dep(target.name)
        for alias in model.context_window_fallbacks if context else model.fallbacks:
            other = self._config.model(alias)
            if other is not None and self.usable(other, failed):
                return self._subjects.queue(alias, other.mode)
        return None

    def usable(self, model: ModelConfig, failed: Collection[str] = ()) -> bool:
        """Has the model a deployment that has not failed the request and takes requests?"""
        return any(d.name not in failed and not self.is_open(d.name) for d in model.deployments)

    def choose(self, model: ModelConfig, exclude: Collection[str] = ()) -> DeploymentConfig | None:
        stats = self._directory.deployment_stats(model.model_name)
        candidates = []
        for d in model.deployments:
            if d.name not in stats or d.name in exclude:
                continue
            state = self._state(d.name)
            if state is BreakerState.CLOSED:
                candidates.append(d)
            elif state is BreakerState.HALF_OPEN and self._probe_due(d.name):
                return d
        if not candidates:
            return None
        strategy = model.routing
        if strategy == "weighted":
            return random.choices(candidates, weights=[d.weight for d in candidates])[0]
        if strategy == "round-robin":
            turn = self._turns.get(model.model_name, 0)
            self._turns[model.model_name] = turn + 1
            return candidates[turn % len(candidates)]
        roomy = [d for d in candidates if not _full(stats[d.name])] or candidates
        if strategy == "lowest-latency":
            if random.random() < EXPLORE:
                return random.choice(roomy)
            return min(roomy, key=lambda d: _latency(stats[d.name]))
        if strategy == "lowest-cost":
            return min(
                roomy,
                key=lambda d: (
                    (d.input_cost_per_mtok or 0.0) + (d.output_cost_per_mtok or 0.0),
                    _load(stats[d.name]),
                ),
            )
        return random.choice(candidates)  # least-busy has no chooser; any will do

    def _probe_due(self, deployment: str) -> bool:
        now = time.monotonic()
        if now - self._probed.get(deployment, -PROBE_INTERVAL_S) < PROBE_INTERVAL_S:
            return False
        self._probed[deployment] = now
        return True


def _full(stats: list[DeploymentStats]) -> bool:
    return sum(s.inflight for s in stats) >= sum(s.capacity for s in stats)


def _load(stats: list[DeploymentStats]) -> float:
    return sum(s.inflight for s in stats) / max(1, sum(s.capacity for s in stats))


def _latency(stats: list[DeploymentStats]) -> float:
    measured = [s.latency_ewma_ms for s in stats if s.latency_ewma_ms is not None]
    return min(measured) if measured else -1.0  # unmeasured: try it first
