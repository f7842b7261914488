"""Choosing one deployment of a routed model alias.

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

from broker.routing.presence import WorkerDirectory
from schemas.config import DeploymentConfig, ModelConfig
from schemas.state import BreakerState, DeploymentStats

EXPLORE = 0.05
PROBE_INTERVAL_S = 1.0


class Router:
    def __init__(
        self, directory: WorkerDirectory, breaker_state: Callable[[str], BreakerState]
    ) -> None:
        self._directory = directory
        self._state = breaker_state
        self._turns: dict[str, int] = {}
        self._probed: dict[str, float] = {}  # deployment -> when it last got a probe

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
