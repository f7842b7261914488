"""Which variant serves a request of an experiment's alias.

Decided in the ingress from memory: the shares come from the config, or for a canary
from its state in NATS (followed locally, broker/experiments/states.py). Sticky splits
hash the experiment's name with the end user or key, so a caller keeps its variant
while the shares stay put, in every ingress; others draw at random.
"""

from __future__ import annotations

import hashlib
import random

from schemas.config import ExperimentConfig
from schemas.experiments import CanaryState

RESOLUTION = 10_000  # hash buckets: a 1% canary step is 100 of them


def shares(experiment: ExperimentConfig, state: CanaryState | None) -> dict[str, int]:
    """Each variant's percentage now: a canary's from its step (0 once rolled back),
    else the configured weights scaled to 100."""
    canary = experiment.canary
    if canary is None:
        total = sum(experiment.variants.values())
        return {v: round(100 * w / total) for v, w in experiment.variants.items()}
    share = 0
    if state is not None and state.rolled_back_at is None:
        share = canary.steps[min(state.step, len(canary.steps) - 1)]
    baseline = next(v for v in experiment.variants if v != canary.variant)
    return {baseline: 100 - share, canary.variant: share}


def pick(experiment: ExperimentConfig, weights: dict[str, int], sticky_id: str | None) -> str:
    """A variant, by ``weights``: hashed from ``sticky_id`` when given, else at random."""
    total = sum(weights.values())
    if total <= 0:
        return next(iter(weights))
    if sticky_id is None:
        point = random.random() * total
    else:
        digest = hashlib.blake2b(f"{experiment.name}\0{sticky_id}".encode(), digest_size=8).digest()
        point = (int.from_bytes(digest, "big") % RESOLUTION) * total / RESOLUTION
    for variant, weight in weights.items():
        if point < weight:
            return variant
        point -= weight
    return next(v for v, w in reversed(weights.items()) if w > 0)
