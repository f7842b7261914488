"""``promptbus experiments list|report NAME|rollback NAME``: traffic splits and canaries,
read over NATS directly (the same data as ``GET /admin/experiments``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS

from broker.experiments import canary, split, stats
from broker.experiments.traffic import report_since
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.provision import ensure_bucket
from broker.nats.subjects import EXPERIMENTS, Subjects
from cli.options import leaf_command
from schemas.config import Config, ExperimentConfig
from schemas.experiments import CanaryState, VariantReport


def _experiment(config: Config, name: str) -> ExperimentConfig:
    found = next((e for e in config.experiments if e.name == name), None)
    if found is None:
        names = ", ".join(e.name for e in config.experiments) or "none"
        raise SystemExit(f"promptbus: no experiment {name!r} in the config (it has: {names})")
    return found


async def _state(nc: NATS, config: Config, name: str) -> CanaryState | None:
    kv = await ensure_bucket(nc.jetstream(), config, EXPERIMENTS)
    return (await canary.read_state(kv, name))[0]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report_table(rows: list[VariantReport], shares: dict[str, int]) -> list[str]:
    """The report as aligned lines: one per variant."""
    lines = [
        f"{'variant':<20} {'share':>5} {'requests':>8} {'errors':>6} {'err%':>6} "
        f"{'p50ms':>6} {'p95ms':>6} {'p99ms':>6} {'tokens':>9} {'cost_usd':>10} {'usd/req':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r.variant:<20} {shares.get(r.variant, 0):>4}% {r.requests:>8} {r.errors:>6} "
            f"{100 * r.error_rate:>5.1f}% {_ms(r.p50_ms):>6} {_ms(r.p95_ms):>6} "
            f"{_ms(r.p99_ms):>6} {r.prompt_tokens + r.completion_tokens:>9} "
            f"{r.cost_usd:>10.6f} {r.cost_per_request_usd:>10.6f}"
        )
    return lines


async def _connected(config: Config, url: str) -> NATS:
    return await connect(url, "promptbus-admin", login_for(config, Role.ADMIN))


async def list_experiments(args: argparse.Namespace, config: Config, url: str) -> None:
    nc = await _connected(config, url)
    try:
        for e in config.experiments:
            state = await _state(nc, config, e.name) if e.canary else None
            shares = split.shares(e, state)
            mix = ", ".join(f"{v} {p}%" for v, p in shares.items())
            kind = "canary" if e.canary else "split"
            status = ""
            if state is not None:
                status = " rolled back" if state.rolled_back_at else ""
                status = " completed" if state.completed_at else status
            print(f"{e.name}  {e.model} -> {mix}  ({kind}, sticky={e.sticky}){status}")
    finally:
        await nc.close()


async def report(args: argparse.Namespace, config: Config, url: str) -> None:
    experiment = _experiment(config, args.name)
    nc = await _connected(config, url)
    try:
        since = report_since(args.hours)
        reports = await stats.read(
            nc.jetstream(), Subjects.of(config), experiment.name, list(experiment.variants), since
        )
        state = await _state(nc, config, experiment.name) if experiment.canary else None
    finally:
        await nc.close()
    span = f"last {args.hours:g} h" if args.hours else "all kept"
    print(f"experiment {experiment.name}: {experiment.model} ({span})")
    for line in report_table(list(reports.values()), split.shares(experiment, state)):
        print(line)
    if state is not None:
        print("canary:")
        for event in state.events:
            detail = f": {event.detail}" if event.detail else ""
            print(f"  {_when(event.at)}  {event.kind:<11} {event.share:>3}%{detail}")


async def roll_back(args: argparse.Namespace, config: Config, url: str) -> None:
    experiment = _experiment(config, args.name)
    if experiment.canary is None:
        raise SystemExit(f"promptbus: experiment {experiment.name!r} is not a canary")
    nc = await _connected(config, url)
    try:
        kv = await ensure_bucket(nc.jetstream(), config, EXPERIMENTS)
        state = await canary.roll_back(kv, experiment, args.reason)
    finally:
        await nc.close()
    print(f"{experiment.name}: canary {experiment.canary.variant} rolled back ({state.reason})")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``experiments`` on the CLI's sub-command factory."""
    parent = add("experiments", None, "traffic splits and canaries: shares, reports, rollback")
    sub = parent.add_subparsers(dest="experiments_command", required=True)

    leaf_command(sub, "list", list_experiments, "every experiment and its current shares")
    shown = leaf_command(sub, "report", report, "each variant's requests, errors, latency and cost")
    shown.add_argument("name")
    shown.add_argument("--hours", type=float, default=None, help="only the last N hours")
    back = leaf_command(sub, "rollback", roll_back, "send a canary's share to 0% now")
    back.add_argument("name")
    back.add_argument("--reason", default="rolled back by an operator")
