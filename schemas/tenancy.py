"""Virtual API keys, tenants, their limits, and the usage ledger's records.

Stored in the ``<prefix>_keys`` KV bucket (``key.<id>`` and ``tenant.<token>``), readable
by any NATS client. A key is stored only as its SHA-256 digest and a four-character
hint: the secret itself is shown once, when it is created or rotated.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.errors import InvalidRequest

Period = Literal["hourly", "daily", "weekly", "monthly", "never"]
BudgetPeriod = Literal["daily", "monthly"]
PositiveInt = Annotated[int, Meta(ge=1)]


_PLAIN_USER = re.compile(r"[A-Za-z0-9_.@=+-]{1,128}")
_KV_SAFE = re.compile(r"[A-Za-z0-9_=-]{1,128}")


def end_user_id(named: str | None) -> str:
    """The end user a request names, as it travels in headers and counters: as given
    when plain (letters, digits, ``_.@=+-``, up to 128), else ``h-`` and a digest;
    "" when none."""
    if not named:
        return ""
    if _PLAIN_USER.fullmatch(named):
        return named
    return "h-" + hashlib.sha256(named.encode()).hexdigest()[:24]


def kv_token(name: str) -> str:
    """A name as a KV key token (KV keys allow fewer characters than subjects)."""
    if _KV_SAFE.fullmatch(name):
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:24]


class Limits(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Token buckets: ``rpm``/``tpm`` per minute, holding ``*_burst`` at most (default:
    one minute's worth); ``max_inflight``: requests in flight at once, across every
    process (more wait for a slot, up to their timeout)."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    rpm_burst: PositiveInt | None = None
    tpm_burst: PositiveInt | None = None
    max_inflight: PositiveInt | None = None


class Budget(Struct, kw_only=True, forbid_unknown_fields=True):
    max_usd: Annotated[float, Meta(gt=0)]
    period: BudgetPeriod = "monthly"


class Quota(Struct, kw_only=True, forbid_unknown_fields=True):
    tokens: PositiveInt
    period: Period = "monthly"


TEAM_NAME = r"^[A-Za-z0-9_-]{1,64}$"
TeamName = Annotated[str, Meta(pattern=TEAM_NAME)]


def check_team_name(name: str) -> None:
    """A team's name is one KV key token: 1-64 letters, digits, ``_`` and ``-``."""
    if not re.fullmatch(TEAM_NAME, name):
        raise InvalidRequest(
            400,
            f"Team name {name[:80]!r}: use 1-64 letters, digits, `_` or `-`.",
            code="invalid_team_name",
            param="name",
        )


class EndUserPolicy(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What each end user of a tenant may do (named by the request's ``user``, or
    ``x-promptbus-user``): every end user gets these buckets, budgets and quota of
    their own, shared with no other end user."""

    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None


class TeamRecord(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A group of a tenant's keys, between the tenant and its keys: the team's limits,
    budgets, quota and models hold for all its keys together."""

    name: str
    tenant: str
    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None
    models: list[str] | None = None  # None: whatever the tenant allows
    created_at: float = 0.0


class TeamSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /admin/teams/{tenant}/{name}``."""

    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None
    models: list[str] | None = None


class TenantRecord(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: str
    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None
    models: list[str] | None = None  # None: every model
    end_users: EndUserPolicy | None = None
    created_at: float = 0.0


class KeyRecord(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    id: str  # "key_" + 12 hex digits of the digest: safe to show and log
    digest: str  # SHA-256 of the secret, hex
    hint: str  # "sk-pb-...abcd"
    tenant: str
    team: str | None = None
    name: str = ""
    models: list[str] | None = None  # None: whatever the tenant allows
    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    transforms: list[str] = msgspec.field(default_factory=list)  # profiles, after the model's
    created_at: float = 0.0
    revoked_at: float | None = None


class KeySpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /admin/keys`` (and what ``promptbus keys create`` sends)."""

    tenant: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    team: TeamName | None = None
    name: str = ""
    models: list[str] | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    transforms: list[str] = msgspec.field(default_factory=list)


class TenantSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /admin/tenants/{name}``."""

    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None
    models: list[str] | None = None
    end_users: EndUserPolicy | None = None


class IssuedKey(Struct, kw_only=True):
    """The answer to creating or rotating a key: the only time ``key`` is shown."""

    key: str
    record: KeyRecord


class UsageRow(Struct, kw_only=True):
    """One line of a usage report: a day's totals for one (tenant, key, model, deployment)."""

    day: str  # YYYY-MM-DD (UTC)
    tenant: str
    key_id: str
    model: str
    deployment: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class UserUsageRow(Struct, kw_only=True):
    """A day's totals for one end user of a tenant (``usage --by user``)."""

    day: str
    tenant: str
    user: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class TeamUsageRow(Struct, kw_only=True):
    """A day's totals for one team's keys (``usage --by team``; "-": keys of no team)."""

    day: str
    tenant: str
    team: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


key_decoder = msgspec.json.Decoder(KeyRecord)
team_decoder = msgspec.json.Decoder(TeamRecord)
tenant_decoder = msgspec.json.Decoder(TenantRecord)
