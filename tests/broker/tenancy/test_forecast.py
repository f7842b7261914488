"""broker/tenancy/forecast.py: month-to-date spend, the recent trend, the projection."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.tenancy.forecast import forecast, month_days
from schemas.tenancy import UsageRow

NOW = datetime(2026, 11, 10, 12, tzinfo=UTC).timestamp()  # noon on the 10th of 30 days


def row(day: int, cost: float, key: str = "key_a") -> UsageRow:
    return UsageRow(
        day=f"2026-11-{day:02d}",
        tenant="acme",
        key_id=key,
        model="m",
        deployment="d",
        cost_usd=cost,
    )


def test_the_trend_of_the_last_seven_days_projects_to_the_month_end() -> None:
    rows = [row(d, 1.0) for d in range(1, 10)] + [row(10, 0.5)]  # $1 a day, half today
    rows += [row(1, 100.0, "key_b")]  # long ago for the trend: $0 a day since
    found = {(f.scope, f.name): f for f in forecast(rows, NOW, {("key", "key_a"): 15.0})}
    tenant, a, b = found[("tenant", "acme")], found[("key", "key_a")], found[("key", "key_b")]
    assert a.month_to_date_usd == 9.5
    assert round(a.daily_rate_usd, 4) == round(6.5 / 6.5, 4)  # 6 days and a half: $6.50
    assert round(a.projected_usd, 2) == round(9.5 + 1.0 * 20.5, 2)  # 20.5 days left
    assert a.budget_usd == 15.0 and a.budget_spent_on == "2026-11-16"  # $5.50 more at $1/day
    assert b.month_to_date_usd == 100.0 and b.daily_rate_usd == 0.0
    assert b.projected_usd == 100.0 and b.budget_spent_on is None
    assert tenant.month_to_date_usd == 109.5 and tenant.budget_usd is None


def test_rows_of_other_months_do_not_count_and_the_days_are_this_months() -> None:
    old = UsageRow(day="2026-10-31", tenant="acme", key_id="k", model="m", deployment="d")
    old.cost_usd = 50.0
    assert forecast([old], NOW) == []
    assert month_days(NOW) == [f"202611{d:02d}" for d in range(1, 11)]
