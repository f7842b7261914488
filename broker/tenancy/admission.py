"""Admission: who is asking, may they use this model, and may they spend more now?

One implementation for every door: the ingress admits HTTP requests before queueing
them, and a worker admits requests that NATS callers queued directly (key in an
``Authorization`` header). Both produce the same errors:

- 401 ``invalid_api_key``: missing, unknown or revoked key
- 403 ``model_not_allowed``: the key or its tenant may not use this model
- 429 ``budget_exceeded`` / ``quota_exceeded``: spend or tokens of the period are used up
  (not retryable until the period resets, which the message and Retry-After give)
- 429 ``rate_limit_exceeded``: a requests- or tokens-per-minute bucket is empty
  (Retry-After says when the request would fit)

An admitted request carries a ``Tenancy`` signed with an HMAC whose key every broker
process reads from the keys bucket, so a worker does not check it twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import KEYS, RATELIMITS, Subjects, name_token
from broker.observability import metrics
from broker.tenancy.keys import KeyStore
from broker.tenancy.ratelimit import Bucket, Decision, RateLimiter
from broker.tenancy.usage import ANONYMOUS, NANO, UsageView, period_end
from schemas.config import Config
from schemas.envelope import RequestMeta, Tenancy
from schemas.errors import (
    AuthenticationError,
    BrokerError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
)
from schemas.tenancy import Budget, KeyRecord, KeySpec, Limits, TenantRecord

ANONYMOUS_KEY = ANONYMOUS  # usage of requests without a key (auth.required off)
DEFAULT_TENANT = "default"


@dataclass(slots=True)
class Grant:
    """An admitted request: its tenancy and the rate-limit state to report."""

    tenancy: Tenancy
    decisions: list[Decision] = field(default_factory=list)

    def rate_headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, from the tightest bucket of each kind."""
        return rate_headers(self.decisions)


def rate_headers(decisions: list[Decision]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        mine = [d for d in decisions if d.bucket.kind == kind]
        if not mine:
            continue
        tight = min(mine, key=lambda d: (d.remaining, -d.reset_s))
        headers[f"x-ratelimit-limit-{kind}"] = str(tight.bucket.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(tight.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = f"{tight.reset_s:.3f}s"
    return headers


def bearer(value: str | None) -> str | None:
    """The key in an ``Authorization: Bearer ...`` (or bare) header value."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else value.strip()


def _mask(secret: str) -> str:
    return f"{secret[:6]}...{secret[-4:]}" if len(secret) > 12 else "***"


def usd(amount: float) -> str:
    """Dollars as set, not rounded away: ``$5.00``, ``$0.00005``, ``$0.1234``."""
    text = f"{amount:.8f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def unauthorized(secret: str | None) -> BrokerError:
    if not secret:
        message = (
            "Missing API key: send it as `Authorization: Bearer sk-pb-...` "
            "(create one with `promptbus keys create`)."
        )
    else:
        message = f"Incorrect or revoked API key provided: {_mask(secret)}."
    return AuthenticationError(401, message, type="invalid_request_error", code="invalid_api_key")


class Admission:
    def __init__(
        self, config: Config, keys: KeyStore, limiter: RateLimiter, usage: UsageView
    ) -> None:
        self.config = config
        self.keys = keys
        self.limiter = limiter
        self.usage = usage

    @classmethod
    async def open(cls, js: JetStreamContext, config: Config) -> Admission:
        """Provision the keys and rate-limit buckets and the usage stream, and follow
        them (keys and usage aggregates stay in memory, live)."""
        await ensure_stream(js, config, Subjects.of(config), StreamKind.USAGE)
        keys = KeyStore(await ensure_bucket(js, config, KEYS))
        limiter = RateLimiter(await ensure_bucket(js, config, RATELIMITS))
        usage = UsageView(js, config)
        await keys.start()
        await usage.start()
        return cls(config, keys, limiter, usage)

    async def close(self) -> None:
        await self.keys.stop()
        await self.usage.stop()

    @property
    def required(self) -> bool:
        return self.config.auth.required

    def vouch(self, grant: Grant) -> Tenancy | None:
        """The tenancy to send with an admitted request, signed by the client as it is
        queued (``BrokerClient.vouch``: the signature covers the reply subject and the
        deadline); None without auth (the worker has nothing to check, and the request
        travels five headers lighter)."""
        return grant.tenancy if self.required else None

    def vouched(self, meta: RequestMeta, body: bytes) -> bool:
        """Was this request, with this body, admitted by a broker process already? A
        tenancy that does not verify (forged, or replayed with another body, reply
        subject or deadline) is counted; the request is then checked by its own key."""
        if self.keys.verify_tenancy(meta, body):
            return True
        if meta.tenancy is not None and meta.tenancy.signature:
            metrics.REFUSED.labels(code="admission_invalid").inc()
        return False

    def check_spec(self, spec: KeySpec) -> None:
        """A key may name only transformation profiles and models the config has."""
        unknown = [name for name in spec.transforms if name not in self.config.transforms]
        if unknown:
            raise InvalidRequest(
                400,
                f"Unknown transformation profile(s): {', '.join(unknown)}; the config defines "
                f"{', '.join(sorted(self.config.transforms)) or 'none'}.",
                code="unknown_transform",
                param="transforms",
            )
        models = [m for m in spec.models or () if self.config.model(m) is None]
        if models:
            raise InvalidRequest(
                400,
                f"Unknown model(s): {', '.join(models)}.",
                code="model_not_found",
                param="models",
            )

    def allowed_models(self, secret: str | None) -> set[str] | None:
        """Models this key may use (None: all); raises 401 for a bad key when required."""
        if not self.required:
            return None
        key = self.keys.lookup(secret) if secret else None
        if key is None:
            raise unauthorized(secret)
        tenant = self.keys.tenant(key.tenant)
        allowed: set[str] | None = None
        for models in (key.models, tenant.models if tenant else None):
            if models is not None:
                allowed = set(models) if allowed is None else allowed & set(models)
        return allowed

    def owner(self, secret: str | None) -> tuple[str, str] | None:
        """(key id, tenant) of a valid key when keys are required, else None; 401 for a
        missing or refused key. For work that runs later in the key's name (batches)."""
        if not self.required:
            return None
        key = self.keys.lookup(secret) if secret else None
        if key is None:
            raise unauthorized(secret)
        return key.id, key.tenant

    async def admit(self, secret: str | None, model: str, estimate: int) -> Grant:
        try:
            return await self._admit(secret, model, estimate)
        except BrokerError as exc:
            metrics.REFUSED.labels(exc.detail.code or "refused").inc()
            raise

    async def _admit(self, secret: str | None, model: str, estimate: int) -> Grant:
        if not self.required:
            return Grant(Tenancy(ANONYMOUS_KEY, DEFAULT_TENANT, estimate))
        key = self.keys.lookup(secret) if secret else None
        if key is None:
            raise unauthorized(secret)
        tenant = self.keys.tenant(key.tenant) or TenantRecord(name=key.tenant)
        self._check_model(key, tenant, model)
        # Spending checks and rate-limit takes run concurrently (one round trip in all);
        # the takes are refunded if spending refuses the request.
        spending = self._spending(key, tenant, time.time())
        *checked, taken = await asyncio.gather(
            *spending, self._take(key, tenant, estimate), return_exceptions=True
        )
        refused = next((r for r in checked if isinstance(r, BaseException)), None)
        if refused is not None:
            if isinstance(taken, list):
                await self._refund(taken, estimate)
            raise refused
        if isinstance(taken, BaseException):
            raise taken
        assert isinstance(taken, list)
        metered = bool(key.budgets or tenant.budgets or tenant.quota)
        return Grant(Tenancy(key.id, tenant.name, estimate, metered), taken)

    def _spending(
        self, key: KeyRecord, tenant: TenantRecord, now: float
    ) -> list[Coroutine[Any, Any, None]]:
        """The budget and quota checks of a key's request (each raises a 429)."""
        return [
            *(self._check_budget("key", key.id, f"key {key.id}", b, now) for b in key.budgets),
            *(
                self._check_budget("tenant", tenant.name, f"tenant {tenant.name}", b, now)
                for b in tenant.budgets
            ),
            self._check_quota(tenant, now),
        ]

    async def check_spending(self, key_id: str, tenant_name: str) -> None:
        """Raise the 429 (``budget_exceeded``, ``quota_exceeded``) a request of this key
        would get for spending, without taking from its rate limits: batch lines use
        idle capacity and are not rate-limited, but budgets and quotas hold for them."""
        key = self.keys.key(key_id)
        if key is None:
            return  # revoked since: the batch keeps running in its name
        tenant = self.keys.tenant(tenant_name) or TenantRecord(name=tenant_name)
        await asyncio.gather(*self._spending(key, tenant, time.time()))

    async def _refund(self, decisions: list[Decision], estimate: int) -> None:
        await asyncio.gather(
            *(
                self.limiter.adjust(d.bucket, -(1 if d.bucket.kind == "requests" else estimate))
                for d in decisions
            )
        )

    def _check_model(self, key: KeyRecord, tenant: TenantRecord, model: str) -> None:
        for owner, allowed in (
            (f"key {key.id}", key.models),
            (f"tenant {tenant.name}", tenant.models),
        ):
            if allowed is not None and model not in allowed:
                raise PermissionDenied(
                    403,
                    f"The {owner} is not allowed to use model `{model}`; allowed: "
                    f"{', '.join(allowed) or 'none'}.",
                    type="permission_error",
                    code="model_not_allowed",
                    param="model",
                )

    async def _check_budget(
        self, scope: str, ident: str, owner: str, budget: Budget, now: float
    ) -> None:
        spent = await self.usage.current(scope, ident, budget.period, "cost", now) / NANO
        if spent >= budget.max_usd:
            resets = period_end(budget.period, now) or now
            raise RateLimited(
                429,
                f"The {owner}'s {budget.period} budget is spent: limit "
                f"{usd(budget.max_usd)}, spent {usd(spent)}; it resets at {_when(resets)}.",
                type="insufficient_quota",
                code="budget_exceeded",
                retry_after=max(1.0, resets - now),
            )

    async def _check_quota(self, tenant: TenantRecord, now: float) -> None:
        quota = tenant.quota
        if quota is None:
            return
        used = await self.usage.current("tenant", tenant.name, quota.period, "tokens", now)
        if used >= quota.tokens:
            resets = period_end(quota.period, now)
            when = f"it resets at {_when(resets)}" if resets else "it never resets"
            raise RateLimited(
                429,
                f"The tenant {tenant.name}'s {quota.period} token quota is used up: "
                f"{used} of {quota.tokens} tokens; {when}.",
                type="insufficient_quota",
                code="quota_exceeded",
                retry_after=max(1.0, resets - now) if resets else None,
            )

    def buckets(self, key_id: str, tenant: str) -> list[Bucket]:
        """The rate-limit buckets a key's requests draw from (its own and its tenant's)."""
        key = self.keys.key(key_id)
        record = self.keys.tenant(tenant)
        out: list[Bucket] = []
        if key is not None:
            out += _buckets("key", key.id, key.limits)
        if record is not None:
            out += _buckets("tenant", name_token(record.name), record.limits)
        return out

    async def _take(self, key: KeyRecord, tenant: TenantRecord, estimate: int) -> list[Decision]:
        buckets = self.buckets(key.id, tenant.name)
        if not buckets:
            return []
        wanted = [(b, 1 if b.kind == "requests" else max(1, estimate)) for b in buckets]
        decisions = await self.limiter.take_all(wanted)
        refused = [d for d in decisions if not d.allowed]
        if refused:
            worst = max(refused, key=lambda d: d.retry_after_s)
            owner = worst.bucket.key.split(".")[0:2]
            error = RateLimited(
                429,
                f"Rate limit reached for {owner[0]} {owner[1]}: {worst.bucket.limit} "
                f"{worst.bucket.kind} per minute; retry in {math.ceil(worst.retry_after_s)}s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retryable=True,
                retry_after=worst.retry_after_s,
            )
            error.headers = rate_headers(decisions)
            raise error
        return decisions

    async def settle(self, tenancy: Tenancy, tokens: int) -> None:
        """Replace the admission's token estimate with the reported usage."""
        delta = tokens - tenancy.estimate
        if delta and tenancy.key_id != ANONYMOUS_KEY:
            for bucket in self.buckets(tenancy.key_id, tenancy.tenant):
                if bucket.kind == "tokens":
                    await self.limiter.adjust(bucket, delta)


def _buckets(scope: str, ident: str, limits: Limits) -> list[Bucket]:
    out = []
    if limits.rpm:
        out.append(
            Bucket(f"{scope}.{ident}.rpm", "requests", limits.rpm, limits.rpm_burst or limits.rpm)
        )
    if limits.tpm:
        out.append(
            Bucket(f"{scope}.{ident}.tpm", "tokens", limits.tpm, limits.tpm_burst or limits.tpm)
        )
    return out
