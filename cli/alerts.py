"""``promptbus alerts list|history|ack ID|rules``: alerts and their rules, read and
changed over NATS directly (the same data as ``/admin/alerts``)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml
from nats.aio.client import Client as NATS

from broker.alerts.rules import sourced
from broker.alerts.store import AlertStore
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import ALERTS, Subjects
from cli.options import leaf_command
from schemas.alerts import AlertRule
from schemas.config import Config
from schemas.errors import BrokerError


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


async def _store(config: Config, url: str) -> tuple[NATS, AlertStore]:
    nc = await connect(url, "promptbus-admin", login_for(config, Role.ADMIN))
    js, subjects = nc.jetstream(), Subjects.of(config)
    await ensure_stream(js, config, subjects, StreamKind.ALERTS)
    return nc, AlertStore(js, await ensure_bucket(js, config, ALERTS), subjects)


async def list_alerts(args: argparse.Namespace, config: Config, url: str) -> None:
    nc, store = await _store(config, url)
    try:
        alerts = [a for a, _ in (await store.active()).values()]
    finally:
        await nc.close()
    if not alerts:
        print("no alerts pending or firing")
        return
    alerts.sort(key=lambda a: (a.status != "firing", -a.started_at))
    for a in alerts:
        acked = f"  acked by {a.acked_by}" if a.acked_by else ""
        since = _when(a.fired_at or a.started_at)
        print(f"{a.status:<8} {a.severity:<8} {a.id}  {a.summary}  since {since}{acked}")


async def history(args: argparse.Namespace, config: Config, url: str) -> None:
    nc, store = await _store(config, url)
    try:
        since = time.time() - args.hours * 3600 if args.hours else None
        events = await store.history(since, args.limit)
    finally:
        await nc.close()
    for e in events:
        print(f"{_when(e.at)}  {e.kind:<12} {e.alert.severity:<8} {e.alert.summary}")


async def acknowledge(args: argparse.Namespace, config: Config, url: str) -> None:
    nc, store = await _store(config, url)
    try:
        alert = await store.ack(args.id, args.by)
    except BrokerError as exc:
        raise SystemExit(f"promptbus: {exc.message}") from None
    finally:
        await nc.close()
    print(f"{alert.id}: acknowledged by {alert.acked_by} at {_when(alert.acked_at)}")


def _rule_line(rule: AlertRule, source: str) -> str:
    where = ",".join(f"{k}={v}" for k, v in rule.labels.items())
    by = f" by {','.join(rule.group_by)}" if rule.group_by else ""
    held = f" for {rule.for_}" if rule.for_s else ""
    text = f"{rule.metric} {rule.op} {rule.threshold:g} over {rule.window}{held}{by}"
    return f"{rule.name:<24} {rule.severity:<8} {source:<8} {text}" + (
        f"  [{where}]" if where else ""
    )


def read_rules(path: str) -> list[AlertRule]:
    """One rule or a list of them, from YAML (or JSON, which YAML reads too)."""
    raw: Any = yaml.safe_load(Path(path).read_text())
    found = raw if isinstance(raw, list) else [raw]
    try:
        return [msgspec.convert(r, AlertRule) for r in found]
    except msgspec.ValidationError as exc:
        raise SystemExit(f"promptbus: {path}: {exc}") from None


async def rules(args: argparse.Namespace, config: Config, url: str) -> None:
    added = read_rules(args.set) if args.set else []
    nc, store = await _store(config, url)
    try:
        if added:
            for rule in added:
                await store.set_rule(rule)
                print(f"{rule.name}: set")
            return
        if args.delete:
            try:
                await store.delete_rule(args.delete)
            except BrokerError as exc:
                raise SystemExit(f"promptbus: {exc.message}") from None
            print(f"{args.delete}: deleted")
            return
        stored = await store.rules()
    finally:
        await nc.close()
    found = sourced(config.alerts, stored)
    if args.json:
        print(json.dumps([msgspec.to_builtins(r) | {"source": s} for r, s in found]))
        return
    for rule, source in found:
        print(_rule_line(rule, source))


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``alerts`` on the CLI's sub-command factory."""
    parent = add("alerts", None, "alerts pending or firing, their history, rules, acks")
    sub = parent.add_subparsers(dest="alerts_command", required=True)

    leaf_command(sub, "list", list_alerts, "alerts pending or firing now")
    past = leaf_command(
        sub, "history", history, "alert events: pending, firing, acknowledged, resolved"
    )
    past.add_argument("--hours", type=float, default=None, help="only the last N hours")
    past.add_argument("--limit", type=int, default=200)
    ack = leaf_command(sub, "ack", acknowledge, "acknowledge an alert: no more reminders of it")
    ack.add_argument("id")
    ack.add_argument("--by", default="operator", help="who acknowledges it")
    ruled = leaf_command(sub, "rules", rules, "the rules in force; --set FILE adds or changes some")
    ruled.add_argument("--set", metavar="FILE", help="a YAML or JSON rule, or a list of them")
    ruled.add_argument("--delete", metavar="NAME", help="remove a rule added at run time")
    ruled.add_argument("--json", action="store_true")
