"""Virtual API keys, tenants, their limits, and the usage ledger's records.

Stored in the ``<prefix>_keys`` KV bucket (``key.<id>`` and ``tenant.<token>``), readable
by any NATS client. A key is stored only as its SHA-256 digest and a four-character
hint: the secret itself is shown once, when it is created or rotated.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Period = Literal["hourly", "daily", "weekly", "monthly", "never"]
BudgetPeriod = Literal["daily", "monthly"]
PositiveInt = Annotated[int, Meta(ge=1)]


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


class TenantRecord(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: str
    limits: Limits = msgspec.field(default_factory=Limits)
    budgets: list[Budget] = msgspec.field(default_factory=list)
    quota: Quota | None = None
    models: list[str] | None = None  # None: every model
    created_at: float = 0.0


class KeyRecord(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    id: str  # "key_" + 12 hex digits of the digest: safe to show and log
    digest: str  # SHA-256 of the secret, hex
    hint: str  # "sk-pb-...abcd"
    tenant: str
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


key_decoder = msgspec.json.Decoder(KeyRecord)
tenant_decoder = msgspec.json.Decoder(TenantRecord)
