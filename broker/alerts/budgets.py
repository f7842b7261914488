"""How much of each budget and quota is used in its current period, for the
``budget_used_pct`` and ``quota_used_pct`` rules: every live key's levels (key, team,
tenant), each budget read once however many keys share it. End users' budgets are per
user and unbounded in number: they are not watched."""

from __future__ import annotations

import asyncio

from broker.tenancy.admission import Admission, Spending

Labels = dict[str, str]


async def used(admission: Admission, now: float) -> list[tuple[str, Labels, float]]:
    """(metric, labels, percent used) of every budget and quota in force."""
    found: dict[str, tuple[str, Spending]] = {}
    for key in admission.keys.keys():
        if key.revoked_at is not None:
            continue
        for spending in admission.spendings(key.id, key.tenant, now):
            found.setdefault(spending.pool.spent, (key.tenant, spending))
    reads = await asyncio.gather(
        *(admission.holds.used(s.pool) for _, s in found.values()), return_exceptions=True
    )
    out = []
    for (tenant, spending), read in zip(found.values(), reads, strict=True):
        if isinstance(read, BaseException):
            continue
        spent, _held = read
        metric = "budget_used_pct" if spending.budget is not None else "quota_used_pct"
        labels = {"tenant": tenant, "owner": spending.owner, "period": spending.period}
        out.append((metric, labels, 100.0 * spent / spending.pool.limit))
    return out
