"""The rules in force and what each one measures now: the config's, those added at run
time (a stored rule of the same name wins), and a budget warning per percentage of
``alerts.budget_warnings``."""

from __future__ import annotations

from broker.telemetry import measures
from broker.telemetry.series import Group, Series
from schemas.alerts import AlertRule
from schemas.config import AlertsConfig


def budget_rules(config: AlertsConfig) -> list[AlertRule]:
    """``budget-80`` (warning), ``budget-90`` (critical at 90% and above), ...: for every
    key's, team's and tenant's budget, out of the box."""
    return [
        AlertRule(
            name=f"budget-{pct:g}".replace(".", "_"),
            metric="budget_used_pct",
            op=">=",
            threshold=pct,
            severity="critical" if pct >= 90 else "warning",
            description=f"{pct:g}% of a budget is spent in its period",
        )
        for pct in sorted(set(config.budget_warnings))
    ]


def sourced(config: AlertsConfig, stored: list[AlertRule]) -> list[tuple[AlertRule, str]]:
    """The rules in force, each with where it comes from: builtin, config or runtime."""
    rows = [(r, "builtin") for r in budget_rules(config)] + [(r, "config") for r in config.rules]
    by_name = {rule.name: (rule, source) for rule, source in rows}
    by_name.update((rule.name, (rule, "runtime")) for rule in stored)
    return list(by_name.values())


def in_force(config: AlertsConfig, stored: list[AlertRule]) -> list[AlertRule]:
    return [rule for rule, _ in sourced(config, stored)]


def measure(rule: AlertRule, series: Series, now: float) -> dict[Group, float | None]:
    """The rule's metric over its window, per group of its ``group_by`` labels."""
    span = rule.window_s
    named = {*rule.labels, *rule.group_by}
    windows = series.window(now - span, now, rule.filters, rule.group_by)
    return {
        group: measures.value(
            rule.metric,
            window,
            span,
            by_deployment="deployment" in named,
            by_model="model" in named,
        )
        for group, window in windows.items()
    }
