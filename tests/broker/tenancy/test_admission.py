"""Admission's messages on their own: amounts of money are shown as configured."""

from __future__ import annotations

import pytest

from broker.tenancy.admission import usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(0.00005, "$0.00005"), (5, "$5.00"), (0.1234, "$0.1234"), (12.5, "$12.50"), (0, "$0.00")],
)
def test_budgets_are_not_rounded_away(amount: float, shown: str) -> None:
    assert usd(amount) == shown
