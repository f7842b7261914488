"""``promptbus keys|teams|tenants|usage``: manage virtual keys, teams and tenants, and read
usage over NATS directly (the same operations as the admin API, for operators with access
to NATS)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.subjects import Subjects
from broker.spend import records as spend_records
from broker.tenancy import views
from broker.tenancy.admission import Admission
from cli.options import leaf_command
from schemas.config import Config
from schemas.errors import BrokerError
from schemas.tenancy import (
    Budget,
    EndUserPolicy,
    KeySpec,
    Limits,
    Quota,
    TeamSpec,
    TenantSpec,
    check_team_name,
)

Action = Callable[[NATS, Admission], Awaitable[Any]]


async def _with_admission(config: Config, url: str, action: Action) -> Any:
    nc = await connect(url, "promptbus-admin", login_for(config, Role.ADMIN))
    try:
        admission = await Admission.open(nc, config)
        try:
            return await action(nc, admission)
        finally:
            await admission.close()
    finally:
        await nc.close()


def _budget(text: str) -> Budget:
    """``5`` or ``5/daily`` or ``20/monthly`` (USD)."""
    amount, _, period = text.partition("/")
    try:
        return Budget(max_usd=float(amount), period=period or "monthly")  # type: ignore[arg-type]
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r}: use USD[/daily|/monthly]") from None


def _quota(text: str) -> Quota:
    """``1000000`` or ``1000000/daily`` (tokens; hourly|daily|weekly|monthly|never)."""
    amount, _, period = text.partition("/")
    try:
        return Quota(tokens=int(amount), period=period or "monthly")  # type: ignore[arg-type]
    except ValueError:
        raise argparse.ArgumentTypeError(f"quota {text!r}: use TOKENS[/period]") from None


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(
        rpm=args.rpm,
        tpm=args.tpm,
        rpm_burst=args.rpm_burst,
        tpm_burst=args.tpm_burst,
        max_inflight=args.max_inflight,
    )


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


async def keys_create(args: argparse.Namespace, config: Config, url: str) -> None:
    spec = KeySpec(
        tenant=args.tenant,
        team=args.team,
        name=args.name or "",
        models=args.model,
        limits=_limits(args),
        budgets=args.budget or [],
        transforms=args.transform or [],
    )

    async def action(nc: NATS, admission: Admission) -> None:
        try:
            admission.check_spec(spec)
        except BrokerError as exc:
            raise SystemExit(f"promptbus: {exc.message}") from None
        issued = await admission.keys.create_key(spec)
        _print(views.issued_view(issued))
        print("\nstore the key now: it is not shown again.")

    await _with_admission(config, url, action)


async def keys_list(args: argparse.Namespace, config: Config, url: str) -> None:
    async def action(nc: NATS, admission: Admission) -> None:
        for record in admission.keys.keys(args.tenant):
            state = "active" if record.revoked_at is None else "revoked"
            models = ",".join(record.models) if record.models is not None else "*"
            print(
                f"{record.id}  {record.hint}  tenant={record.tenant}  {state}  "
                f"models={models}  {record.name}"
            )

    await _with_admission(config, url, action)


async def keys_change(args: argparse.Namespace, config: Config, url: str) -> None:
    async def action(nc: NATS, admission: Admission) -> None:
        if args.keys_command == "rotate":
            issued = await admission.keys.rotate_key(args.key_id)
            if issued is None:
                raise SystemExit(f"promptbus: no active key {args.key_id}")
            _print(views.issued_view(issued))
        else:
            record = await admission.keys.revoke_key(args.key_id)
            if record is None:
                raise SystemExit(f"promptbus: no key {args.key_id}")
            print(f"{record.id} revoked")

    await _with_admission(config, url, action)


async def tenants_set(args: argparse.Namespace, config: Config, url: str) -> None:
    per_user = [args.user_rpm, args.user_tpm, args.user_max_inflight, args.user_budget]
    end_users = None
    if any(v is not None for v in per_user) or args.user_quota is not None:
        end_users = EndUserPolicy(
            limits=Limits(
                rpm=args.user_rpm, tpm=args.user_tpm, max_inflight=args.user_max_inflight
            ),
            budgets=args.user_budget or [],
            quota=args.user_quota,
        )
    spec = TenantSpec(
        limits=_limits(args),
        budgets=args.budget or [],
        quota=args.quota,
        models=args.model,
        end_users=end_users,
    )

    async def action(nc: NATS, admission: Admission) -> None:
        _print(views.key_free(await admission.keys.set_tenant(args.name, spec)))

    await _with_admission(config, url, action)


async def teams_set(args: argparse.Namespace, config: Config, url: str) -> None:
    spec = TeamSpec(
        limits=_limits(args), budgets=args.budget or [], quota=args.quota, models=args.model
    )

    async def action(nc: NATS, admission: Admission) -> None:
        try:
            check_team_name(args.name)
            admission.check_models(spec.models)
        except BrokerError as exc:
            raise SystemExit(f"promptbus: {exc.message}") from None
        _print(views.team_view(await admission.keys.set_team(args.tenant, args.name, spec)))

    await _with_admission(config, url, action)


async def teams_list(args: argparse.Namespace, config: Config, url: str) -> None:
    async def action(nc: NATS, admission: Admission) -> None:
        for team in admission.keys.teams(args.tenant):
            limits = msgspec.to_builtins(team.limits)
            shown = " ".join(f"{k}={v}" for k, v in sorted(limits.items())) or "no limits"
            keys = sum(1 for k in admission.keys.keys(team.tenant) if k.team == team.name)
            models = ",".join(team.models) if team.models is not None else "*"
            print(f"{team.tenant}/{team.name}  {shown}  models={models}  keys={keys}")

    await _with_admission(config, url, action)


async def tenants_list(args: argparse.Namespace, config: Config, url: str) -> None:
    async def action(nc: NATS, admission: Admission) -> None:
        _print(await views.tenants_view(admission))

    await _with_admission(config, url, action)


async def spend_log(args: argparse.Namespace, config: Config, url: str) -> None:
    """``usage --requests``: one line per request; ``--format jsonl|csv`` exports every
    page (one page in memory at a time) to stdout or ``--output``."""
    since = time.time() - args.hours * 3600 if args.hours else None
    nc = await connect(url, "promptbus-admin", login_for(config, Role.ADMIN))
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: ASYNC230
    try:
        cursor, first = 0, True
        while True:
            page, after = await spend_records.read(
                nc.jetstream(),
                Subjects.of(config),
                tenant=args.tenant,
                key_id=args.key,
                model=args.model,
                since=since,
                after=cursor,
                limit=spend_records.MAX_PAGE,
            )
            if args.format == "csv":
                text = spend_records.as_csv(page)
                out.write(text if first else text.split("\n", 1)[1])
            elif args.format == "jsonl":
                out.write(spend_records.as_jsonl(page).decode())
            else:
                for r in page:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at))
                    tokens = r.prompt_tokens + r.completion_tokens
                    flags = ("cache " if r.cache_hit else "") + (r.error or "")
                    out.write(
                        f"{when} {r.request_id} {r.tenant} {r.key_id} {r.user or '-'} "
                        f"{r.model} {r.deployment or '-'} {r.status} {tokens} "
                        f"${r.cost_usd:.6f} {r.latency_ms:.0f}ms {flags}\n"
                    )
            first = False
            if after is None:
                break
            cursor = after
    finally:
        await nc.close()
        if out is not sys.stdout:
            out.close()


async def usage_forecast(args: argparse.Namespace, config: Config, url: str) -> None:
    async def action(nc: NATS, admission: Admission) -> None:
        rows = await views.forecast_view(nc.jetstream(), config, admission.keys, args.tenant)
        if args.json:
            _print(msgspec.to_builtins(rows))
            return
        print(
            f"{'scope':<7} {'name':<20} {'month to date':>14} {'per day':>10} "
            f"{'projected':>12} {'budget':>10}  budget spent on"
        )
        for r in rows:
            budget = f"{r.budget_usd:.2f}" if r.budget_usd is not None else "-"
            print(
                f"{r.scope:<7} {r.name:<20} {r.month_to_date_usd:>14.4f} "
                f"{r.daily_rate_usd:>10.4f} {r.projected_usd:>12.4f} {budget:>10}  "
                f"{r.budget_spent_on or '-'}"
            )

    await _with_admission(config, url, action)


async def usage(args: argparse.Namespace, config: Config, url: str) -> None:
    if args.requests:
        await spend_log(args, config, url)
        return
    if args.forecast:
        await usage_forecast(args, config, url)
        return

    async def action(nc: NATS, admission: Admission) -> None:
        report = await views.usage_report(
            nc.jetstream(), config, args.days, args.tenant, args.by, admission.keys
        )
        if args.json:
            _print(report)
            return
        if args.by != "key":
            print(
                f"{'day':<10} {'tenant':<14} {args.by:<24} {'requests':>8} {'tokens':>10} "
                f"{'cost_usd':>12}"
            )
            for row in report["rows"]:
                tokens = row["prompt_tokens"] + row["completion_tokens"]
                print(
                    f"{row['day']:<10} {row['tenant']:<14} {row[args.by]:<24} "
                    f"{row['requests']:>8} {tokens:>10} {row['cost_usd']:>12.6f}"
                )
            print(f"total cost: ${report['cost_usd']:.6f}")
            return
        print(
            f"{'day':<10} {'tenant':<14} {'key':<16} {'model':<18} {'deployment':<20} "
            f"{'requests':>8} {'tokens':>10} {'cost_usd':>12}"
        )
        for row in report["rows"]:
            tokens = row["prompt_tokens"] + row["completion_tokens"]
            print(
                f"{row['day']:<10} {row['tenant']:<14} {row['key_id']:<16} {row['model']:<18} "
                f"{row['deployment']:<20} {row['requests']:>8} {tokens:>10} "
                f"{row['cost_usd']:>12.6f}"
            )
        print(f"total cost: ${report['cost_usd']:.6f}")

    await _with_admission(config, url, action)


async def demo_key(config: Config, nc: NATS, path: Path) -> str:
    """The all-in-one's ready-to-use key (tenant ``demo``), kept in ``path`` between runs."""
    admission = await Admission.open(nc, config)
    try:
        secret = _read_secret(path)
        if secret and admission.keys.lookup(secret) is not None:
            return secret
        issued = await admission.keys.create_key(KeySpec(tenant="demo", name="make run demo key"))
        _write_secret(path, issued.key)
        return issued.key
    finally:
        await admission.close()


def _read_secret(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")
    path.chmod(0o600)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``keys``, ``tenants`` and ``usage`` on the CLI's sub-command factory."""

    def limit_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rpm", type=int, default=None, help="requests per minute")
        parser.add_argument("--tpm", type=int, default=None, help="tokens per minute")
        parser.add_argument("--rpm-burst", type=int, default=None)
        parser.add_argument("--tpm-burst", type=int, default=None)
        parser.add_argument(
            "--max-inflight", type=int, default=None, help="requests in flight at once"
        )
        parser.add_argument("--budget", type=_budget, action="append", help="USD[/daily|/monthly]")
        parser.add_argument("--model", action="append", help="allowed model (repeatable)")

    keys = add("keys", None, "create, list, rotate and revoke virtual API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = leaf_command(keys_sub, "create", keys_create, "a new key (the secret is printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--team", default=None, help="a team of the tenant (teams set)")
    create.add_argument("--name", default="")
    create.add_argument("--transform", action="append", help="transformation profile (repeatable)")
    limit_options(create)
    listing = leaf_command(keys_sub, "list", keys_list, "keys (never their secrets)")
    listing.add_argument("--tenant", default=None)
    for verb in ("rotate", "revoke"):
        change = leaf_command(keys_sub, verb, keys_change, f"{verb} a key by id")
        change.add_argument("key_id")

    tenants = add("tenants", None, "set and list tenants' limits, budgets and quotas")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    setter = leaf_command(tenants_sub, "set", tenants_set, "create or replace a tenant's settings")
    setter.add_argument("name")
    limit_options(setter)
    setter.add_argument("--quota", type=_quota, default=None, help="TOKENS[/period]")
    leaf_command(tenants_sub, "list", tenants_list, "tenants and their usage")
    for option, help in (
        ("--user-rpm", "each end user's requests per minute"),
        ("--user-tpm", "each end user's tokens per minute"),
        ("--user-max-inflight", "each end user's requests in flight"),
    ):
        setter.add_argument(option, type=int, default=None, help=help)
    setter.add_argument(
        "--user-budget", type=_budget, action="append", help="each end user's USD[/period]"
    )
    setter.add_argument("--user-quota", type=_quota, default=None, help="each end user's quota")

    teams = add("teams", None, "set and list teams: groups of a tenant's keys with limits")
    teams_sub = teams.add_subparsers(dest="teams_command", required=True)
    team_setter = leaf_command(teams_sub, "set", teams_set, "create or replace a team's settings")
    team_setter.add_argument("tenant")
    team_setter.add_argument("name")
    limit_options(team_setter)
    team_setter.add_argument("--quota", type=_quota, default=None, help="TOKENS[/period]")
    team_listing = leaf_command(teams_sub, "list", teams_list, "teams and their limits")
    team_listing.add_argument("--tenant", default=None)

    report = add("usage", None, "tokens and cost per day, tenant, key, model, deployment")
    report.set_defaults(action=usage)
    report.add_argument("--tenant", default=None)
    report.add_argument("--days", type=int, default=1, help="the last N days (default: today)")
    report.add_argument("--json", action="store_true")
    report.add_argument(
        "--by", choices=views.USAGE_BY, default="key", help="rows per key (default), team or user"
    )
    report.add_argument("--requests", action="store_true", help="the spend log: each request")
    report.add_argument(
        "--forecast", action="store_true", help="this month's spend, projected, with budgets"
    )
    report.add_argument("--key", default=None, help="with --requests: one key's")
    report.add_argument("--model", default=None, help="with --requests: one model's")
    report.add_argument("--hours", type=float, default=None, help="with --requests: the last N h")
    report.add_argument("--format", choices=("text", "jsonl", "csv"), default="text")
    report.add_argument("--output", "-o", default=None, help="with --requests: write here")
