"""Views of keys, tenants and usage for the admin API and the CLI (same data, one place)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js import JetStreamContext

from broker.tenancy.admission import Admission
from broker.tenancy.forecast import Forecast, forecast, month_days
from broker.tenancy.keys import KeyStore
from broker.tenancy.usage import BUDGET_PERIODS, NANO, report, team_rows, user_report
from schemas.config import Config
from schemas.tenancy import IssuedKey, KeyRecord, TeamRecord


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as operators see it: no secret, no digest."""
    view: dict[str, Any] = msgspec.structs.asdict(record)
    view.pop("digest")
    view["limits"] = msgspec.to_builtins(record.limits)
    view["budgets"] = msgspec.to_builtins(record.budgets)
    view["active"] = record.revoked_at is None
    return view


def key_free(value: Any) -> Any:
    """Any record as plain data (tenants have no secrets, keys lose their digest)."""
    if isinstance(value, KeyRecord):
        return key_view(value)
    return msgspec.to_builtins(value)


def issued_view(issued: IssuedKey) -> dict[str, Any]:
    return {"key": issued.key, **key_view(issued.record)}


async def forecast_view(
    js: JetStreamContext, config: Config, keys: KeyStore, tenant: str | None
) -> list[Forecast]:
    """This month's spend and its projection per tenant and key, with monthly budgets."""
    now = time.time()
    rows = await report(js, config, month_days(now), tenant)
    budgets: dict[tuple[str, str], float] = {}
    for record in keys.tenants():
        for budget in record.budgets:
            if budget.period == "monthly":
                budgets[("tenant", record.name)] = budget.max_usd
    for key in keys.keys(tenant):
        for budget in key.budgets:
            if budget.period == "monthly":
                budgets[("key", key.id)] = budget.max_usd
    return forecast(rows, now, budgets)


def team_view(team: TeamRecord) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(team)
    return view


async def tenants_view(admission: Admission) -> list[dict[str, Any]]:
    """Tenants with their spend this day and month and their quota use, read fresh."""
    now = time.time()
    usage = admission.usage
    views = []
    for tenant in admission.keys.tenants():
        view: dict[str, Any] = msgspec.to_builtins(tenant)
        view["spent_usd"] = {
            period: round(await usage.current("tenant", tenant.name, period, "cost", now) / NANO, 6)
            for period in BUDGET_PERIODS
        }
        if tenant.quota is not None:
            used = await usage.current("tenant", tenant.name, tenant.quota.period, "tokens", now)
            view["quota_used_tokens"] = used
        view["keys"] = len([k for k in admission.keys.keys(tenant.name) if k.revoked_at is None])
        views.append(view)
    return views


USAGE_BY = ("key", "team", "user")


async def usage_report(
    js: JetStreamContext,
    config: Config,
    days: int,
    tenant: str | None,
    by: str = "key",
    keys: KeyStore | None = None,
) -> dict[str, Any]:
    """The last ``days`` days (UTC, today included): rows and totals per dimension; or,
    ``by`` team or end user, one row per day and team (``keys`` tells each key's team)
    or end user."""
    today = datetime.now(UTC)
    wanted = [(today - timedelta(days=n)).strftime("%Y%m%d") for n in range(days - 1, -1, -1)]
    shown_days = [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in wanted]
    if by == "user":
        users = await user_report(js, config, wanted, tenant)
        return {
            "days": shown_days,
            "rows": msgspec.to_builtins(users),
            "cost_usd": round(sum(r.cost_usd for r in users), 9),
        }
    rows = await report(js, config, wanted, tenant)
    if by == "team":
        team_of = {k.id: k.team for k in keys.keys()} if keys is not None else {}
        teams = team_rows(rows, team_of)
        return {
            "days": shown_days,
            "rows": msgspec.to_builtins(teams),
            "cost_usd": round(sum(r.cost_usd for r in teams), 9),
        }
    totals: dict[str, dict[str, dict[str, float]]] = {
        dim: defaultdict(lambda: {"requests": 0, "tokens": 0, "cost_usd": 0.0})
        for dim in ("tenant", "key_id", "model", "deployment")
    }
    for row in rows:
        for dim, bucket in totals.items():
            entry = bucket[getattr(row, dim)]
            entry["requests"] += row.requests
            entry["tokens"] += row.prompt_tokens + row.completion_tokens
            entry["cost_usd"] = round(entry["cost_usd"] + row.cost_usd, 9)
    return {
        "days": shown_days,
        "rows": msgspec.to_builtins(rows),
        "by_tenant": dict(totals["tenant"]),
        "by_key": dict(totals["key_id"]),
        "by_model": dict(totals["model"]),
        "by_deployment": dict(totals["deployment"]),
        "cost_usd": round(sum(r.cost_usd for r in rows), 9),
    }
