"""Cost forecasts: each tenant's and key's month-to-date spend and where the recent daily
trend takes it by the month's end, beside its monthly budget (``promptbus usage
--forecast``, ``GET /admin/forecast``).

The trend is the spend of the last ``TREND_DAYS`` days (today's part included) per day
elapsed in them; the projection adds that rate for the time left in the month (UTC).
"""

from __future__ import annotations

import calendar
import time
from collections import defaultdict
from datetime import UTC, datetime

from msgspec import Struct

from schemas.tenancy import UsageRow

TREND_DAYS = 7
DAY_S = 86400.0


class Forecast(Struct, kw_only=True):
    scope: str  # "tenant" or "key"
    name: str  # the tenant's name or the key's id
    tenant: str
    month_to_date_usd: float
    daily_rate_usd: float  # the recent trend
    projected_usd: float  # by the month's end at that rate
    budget_usd: float | None = None  # its monthly budget, if it has one
    budget_spent_on: str | None = None  # the day the projection reaches it (YYYY-MM-DD)


def month_days(now: float) -> list[str]:
    """YYYYMMDD of every day of this month up to today (UTC)."""
    today = datetime.fromtimestamp(now, UTC)
    return [f"{today.year:04d}{today.month:02d}{d:02d}" for d in range(1, today.day + 1)]


def forecast(
    rows: list[UsageRow], now: float, budgets: dict[tuple[str, str], float] | None = None
) -> list[Forecast]:
    """Per tenant and per key, from this month's usage rows (``UsageRow.day`` ISO)."""
    today = datetime.fromtimestamp(now, UTC)
    start = datetime(today.year, today.month, 1, tzinfo=UTC).timestamp()
    last_day = calendar.monthrange(today.year, today.month)[1]
    end = start + last_day * DAY_S
    midnight = now - now % DAY_S
    trend_from = max(start, midnight - (TREND_DAYS - 1) * DAY_S)  # a day's start
    elapsed_days = max((now - trend_from) / DAY_S, 1 / 24)  # an hour at least
    spent: dict[tuple[str, str, str], float] = defaultdict(float)
    recent: dict[tuple[str, str, str], float] = defaultdict(float)
    for row in rows:
        day = datetime.fromisoformat(row.day).replace(tzinfo=UTC).timestamp()
        if not start <= day < end:
            continue
        for who in (("tenant", row.tenant, row.tenant), ("key", row.key_id, row.tenant)):
            spent[who] += row.cost_usd
            if day >= trend_from:
                recent[who] += row.cost_usd
    out = []
    for (scope, name, tenant), total in sorted(spent.items()):
        rate = recent[(scope, name, tenant)] / elapsed_days
        projected = total + rate * max(0.0, end - now) / DAY_S
        budget = (budgets or {}).get((scope, name))
        reached = None
        if budget is not None and rate > 0 and projected >= budget:
            when = now + max(0.0, budget - total) / rate * DAY_S
            reached = time.strftime("%Y-%m-%d", time.gmtime(when))
        out.append(
            Forecast(
                scope=scope,
                name=name,
                tenant=tenant,
                month_to_date_usd=round(total, 6),
                daily_rate_usd=round(rate, 6),
                projected_usd=round(projected, 6),
                budget_usd=budget,
                budget_spent_on=reached,
            )
        )
    return out
