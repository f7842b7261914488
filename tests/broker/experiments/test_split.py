"""broker/experiments/split.py: shares and the choice of a variant."""

from __future__ import annotations

import collections

from broker.experiments.split import pick, shares
from schemas.config import CanaryConfig, ExperimentConfig
from schemas.experiments import CanaryState

SPLIT = ExperimentConfig(name="t", model="chat", variants={"big": 90, "small": 10})
CANARY = ExperimentConfig(
    name="c",
    model="chat2",
    variants={"old": 1, "new": 1},
    canary=CanaryConfig(variant="new", steps=[1, 5, 50, 100]),
)


def test_weights_are_shares_and_draws_follow_them() -> None:
    weights = shares(SPLIT, None)
    assert weights == {"big": 90, "small": 10}
    drawn = collections.Counter(pick(SPLIT, weights, None) for _ in range(20_000))
    assert 0.08 < drawn["small"] / 20_000 < 0.12


def test_sticky_callers_keep_their_variant_and_spread_over_both() -> None:
    weights = shares(SPLIT, None)
    users = [f"user-{i}" for i in range(2_000)]
    first = {u: pick(SPLIT, weights, u) for u in users}
    assert all(pick(SPLIT, weights, u) == first[u] for u in users)
    small = sum(1 for v in first.values() if v == "small")
    assert 140 < small < 260  # about 10% of 2,000


def test_a_canary_starts_at_nothing_steps_up_and_rolls_back_to_zero() -> None:
    assert shares(CANARY, None) == {"old": 100, "new": 0}
    assert shares(CANARY, CanaryState(step=0)) == {"old": 99, "new": 1}
    assert shares(CANARY, CanaryState(step=2)) == {"old": 50, "new": 50}
    assert shares(CANARY, CanaryState(step=2, rolled_back_at=1.0)) == {"old": 100, "new": 0}


def test_sticky_users_on_the_canary_stay_on_it_as_it_grows() -> None:
    users = [f"u{i}" for i in range(3_000)]
    at = [
        {u for u in users if pick(CANARY, shares(CANARY, CanaryState(step=s)), u) == "new"}
        for s in range(4)
    ]
    assert at[0] <= at[1] <= at[2] <= at[3] and len(at[3]) == len(users)
    assert 0 < len(at[0]) < 90 and 60 < len(at[1]) < 240  # ~1% and ~5%
