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

Every check runs from memory on the request path: rate limits from leases of the shared
buckets (ratelimit.py), budgets and quotas from leased holds (holds.py); each goes to
NATS only to renew its lease, once per many requests.

An admitted request carries a ``Tenancy`` signed with a MAC whose key every broker
process reads from the keys bucket, so a worker does not check it twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import KEYS, RATELIMITS, Subjects, name_token
from broker.observability import metrics
from broker.tenancy.concurrency import Concurrency, Slot
from broker.tenancy.holds import Holds, Pool, Reserved
from broker.tenancy.keys import KeyStore
from broker.tenancy.ratelimit import Bucket, Decision, RateLimiter
from broker.tenancy.usage import ANONYMOUS, NANO, UsageView, period_end, period_key
from schemas.config import Config
from schemas.envelope import RequestMeta, Tenancy
from schemas.errors import (
    AuthenticationError,
    BrokerError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
)
from schemas.tenancy import (
    Budget,
    KeyRecord,
    KeySpec,
    Limits,
    Period,
    Quota,
    TeamRecord,
    TenantRecord,
    end_user_id,
    kv_token,
)

ANONYMOUS_KEY = ANONYMOUS  # usage of requests without a key (auth.required off)
DEFAULT_TENANT = "default"
OUTPUT_HOLD = 256  # output tokens held for a request that sets no output limit


@dataclass(frozen=True, slots=True)
class Spending:
    """A budget or quota a key's requests count against, in the current period."""

    pool: Pool
    owner: str  # "key key_..." or "tenant ..."
    period: Period
    budget: Budget | None = None  # None: the tenant's token quota


@dataclass(frozen=True, slots=True)
class Level:
    """One level of the hierarchy a request counts against: key, team, tenant, end user."""

    scope: str  # "key", "team", "tenant", "user": in counter subjects
    ident: str  # who, in counter subjects ("<tenant>/<team>" for a team)
    entry: str  # its prefix in KV keys (rate-limit buckets, concurrency caps)
    owner: str  # in messages: "key key_...", "team acme/ml", "end user alice of tenant acme"
    limits: Limits
    budgets: list[Budget]
    quota: Quota | None = None


def levels(
    key: KeyRecord | None,
    key_id: str,
    team: TeamRecord | None,
    tenant: TenantRecord | None,
    tenant_name: str,
    user: str,
) -> list[Level]:
    """The levels a request of this key (and end user) counts against, tightest first."""
    out = [Level("key", key_id, f"key.{key_id}", f"key {key_id}", *_own(key))]
    if team is not None:
        ident = f"{tenant_name}/{team.name}"
        entry = f"team.{kv_token(tenant_name)}.{team.name}"
        out.append(
            Level("team", ident, entry, f"team {ident}", team.limits, team.budgets, team.quota)
        )
    if tenant is not None:
        out.append(
            Level(
                "tenant",
                tenant_name,
                f"tenant.{name_token(tenant.name)}",
                f"tenant {tenant_name}",
                tenant.limits,
                tenant.budgets,
                tenant.quota,
            )
        )
        policy = tenant.end_users
        if policy is not None and user:
            out.append(
                Level(
                    "user",
                    f"{tenant_name}/{user}",
                    f"user.{kv_token(tenant_name)}.{kv_token(user)}",
                    f"end user {user} of tenant {tenant_name}",
                    policy.limits,
                    policy.budgets,
                    policy.quota,
                )
            )
    return out


def _own(key: KeyRecord | None) -> tuple[Limits, list[Budget]]:
    return (key.limits, key.budgets) if key is not None else (Limits(), [])


@dataclass(frozen=True, slots=True)
class Plan:
    """A key's levels as admission checks them: buckets, budgets and quotas, and caps."""

    buckets: list[Bucket]
    spendings: list[Spending]
    caps: list[tuple[str, int, str]]  # (KV entry, max_inflight, owner)


@dataclass(slots=True)
class Grant:
    """An admitted request: its tenancy and the rate-limit state to report."""

    tenancy: Tenancy
    decisions: list[Decision] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)  # under max_inflight caps
    waited_s: float = 0.0  # for a slot

    def finish(self) -> None:
        """The request has ended (answered, failed or abandoned): free its slots."""
        for slot in self.slots:
            slot.release()

    def rate_headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, from the tightest bucket of each kind."""
        return rate_headers(self.decisions)


def rate_headers(decisions: list[Decision]) -> dict[str, str]:
    tightest: dict[str, Decision] = {}  # kind -> fewest left (then: longest to reset)
    for d in decisions:
        best = tightest.get(d.bucket.kind)
        if best is None or (d.remaining, -d.reset_s) < (best.remaining, -best.reset_s):
            tightest[d.bucket.kind] = d
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        tight = tightest.get(kind)
        if tight is None:
            continue
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
        self,
        config: Config,
        keys: KeyStore,
        limiter: RateLimiter,
        usage: UsageView,
        holds: Holds,
        concurrency: Concurrency | None = None,
    ) -> None:
        self.config = config
        self.concurrency = concurrency
        self.keys = keys
        self.limiter = limiter
        self.usage = usage
        self.holds = holds
        self._subjects = Subjects.of(config)
        self._plans: dict[tuple[str, str, str], Plan] = {}  # this second's
        self._plans_at = 0
        self._prices: dict[str, tuple[float, float]] = {}  # model -> dearest (in, out)

    @classmethod
    async def open(cls, nc: NATS, config: Config) -> Admission:
        """Provision the keys and rate-limit buckets and the usage stream, and follow
        them (keys and usage aggregates stay in memory, live)."""
        js = nc.jetstream()
        subjects = Subjects.of(config)
        await ensure_stream(js, config, subjects, StreamKind.USAGE)
        keys = KeyStore(await ensure_bucket(js, config, KEYS))
        shared_limits = await ensure_bucket(js, config, RATELIMITS)
        limiter = RateLimiter(shared_limits)
        usage = UsageView(js, config)
        holds = Holds(nc, js, subjects.usage_stream)
        concurrency = Concurrency(shared_limits)
        await keys.start()
        await usage.start()
        limiter.start()
        holds.start()
        concurrency.start()
        return cls(config, keys, limiter, usage, holds, concurrency)

    async def close(self) -> None:
        if self.concurrency is not None:
            await self.concurrency.stop()
        await self.limiter.stop()
        await self.holds.stop()
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
        self.check_models(spec.models)
        if spec.team is not None and self.keys.team(spec.tenant, spec.team) is None:
            known = ", ".join(t.name for t in self.keys.teams(spec.tenant)) or "none"
            raise InvalidRequest(
                400,
                f"Tenant {spec.tenant} has no team `{spec.team}` (it has: {known}); create "
                "it first (`promptbus teams set` or PUT /admin/teams/{tenant}/{name}).",
                code="unknown_team",
                param="team",
            )

    def check_models(self, names: list[str] | None) -> None:
        """Models a key, team or tenant may be limited to must exist (or be split aliases)."""
        config = self.config
        models = [
            m for m in names or () if config.model(m) is None and config.experiment(m) is None
        ]
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

    async def admit(
        self,
        secret: str | None,
        model: str,
        estimate: int,
        output: int | None = None,
        wait_s: float = 0.0,
        gone: Callable[[], Awaitable[object]] | None = None,
        asked_as: str | None = None,
        user: str | None = None,
    ) -> Grant:
        """Admit a request of ``model`` with about ``estimate`` prompt tokens and at most
        ``output`` output tokens (None: not limited by the request), waiting up to
        ``wait_s`` for a slot under its key's and tenant's ``max_inflight`` (or until
        ``gone`` returns: the caller left). ``asked_as``: the alias the caller named, when
        an experiment routed it to ``model`` (keys are allowed aliases). ``user``: the
        end user the request names (its tenant's ``end_users`` policy applies to them).
        The caller calls ``Grant.finish`` when the request has ended."""
        try:
            if not self.required:
                return Grant(Tenancy(ANONYMOUS_KEY, DEFAULT_TENANT, estimate))
            key = self.keys.lookup(secret) if secret else None
            if key is None:
                raise unauthorized(secret)
            tenant = self.keys.tenant(key.tenant) or TenantRecord(name=key.tenant)
            team = self.keys.team(key.tenant, key.team) if key.team else None
            self._check_model(key, team, tenant, asked_as or model)
            who = end_user_id(user)
            plan = self.plan(key.id, tenant.name, time.time(), who)
            if not plan.caps:
                return await self._admit(key, tenant, model, estimate, output, who, plan)
            slots, waited = await self._slots(plan.caps, wait_s, gone)
            try:
                grant = await self._admit(key, tenant, model, estimate, output, who, plan)
            except BaseException:
                for slot in slots:
                    slot.release()
                raise
            grant.slots, grant.waited_s = slots, waited
            return grant
        except BrokerError as exc:
            metrics.REFUSED.labels(exc.detail.code or "refused").inc()
            raise

    async def _slots(
        self,
        caps: list[tuple[str, int, str]],
        wait_s: float,
        gone: Callable[[], Awaitable[object]] | None,
    ) -> tuple[list[Slot], float]:
        """A slot under every cap (key first, then tenant), or none; and the wait."""
        assert self.concurrency is not None
        started = time.monotonic()
        slots: list[Slot] = []
        try:
            for entry, limit, owner in caps:
                left = wait_s - (time.monotonic() - started)
                slots.append(await self.concurrency.acquire(entry, limit, left, owner, gone))
        except BaseException:
            for slot in slots:
                slot.release()
            raise
        return slots, time.monotonic() - started

    async def _admit(
        self,
        key: KeyRecord,
        tenant: TenantRecord,
        model: str,
        estimate: int,
        output: int | None,
        user: str,
        plan: Plan,
    ) -> Grant:
        spendings, buckets = plan.spendings, plan.buckets
        team = key.team or ""
        if not spendings and not buckets:
            return Grant(Tenancy(key.id, tenant.name, estimate, team=team, user=user))
        wanted = _wanted(buckets, estimate)
        if not spendings:
            decisions = await self._take(wanted)
            return Grant(Tenancy(key.id, tenant.name, estimate, team=team, user=user), decisions)
        tokens = estimate + (OUTPUT_HOLD if output is None else output)
        cost = self._cost_hold(model, estimate, tokens - estimate)
        # Most requests are decided from this process's leases alone, synchronously.
        taken = self._from_leases(spendings, wanted, cost, tokens)
        if taken is None:
            taken = await self._hold_and_take(spendings, wanted, cost, tokens, estimate)
        tenancy = Tenancy(
            key.id,
            tenant.name,
            estimate,
            True,
            hold_cost=cost,
            hold_tokens=tokens,
            team=team,
            user=user,
            settle_later=all(self.holds.roomy(s.pool) for s in spendings),
        )
        return Grant(tenancy, taken)

    def _from_leases(
        self,
        spendings: list[Spending],
        wanted: list[tuple[Bucket, int]],
        cost: int,
        tokens: int,
    ) -> list[Decision] | None:
        """Holds and rate-limit takes from this process's leases, or none of them (None)."""
        if not self.holds.reserve_leased([(s.pool, _amount(s, cost, tokens)) for s in spendings]):
            return None
        leased = self.limiter.take_leased(wanted)
        if leased is None:
            self._give_back(spendings, cost, tokens)
        return leased

    async def _hold_and_take(
        self,
        spendings: list[Spending],
        wanted: list[tuple[Bucket, int]],
        cost: int,
        tokens: int,
        estimate: int,
    ) -> list[Decision]:
        """Holds and rate-limit takes run concurrently (from memory, or one round trip
        in all); either is given back if the other refuses the request."""
        held, taken = await asyncio.gather(
            self._reserve(spendings, cost, tokens),
            self._take(wanted),
            return_exceptions=True,
        )
        if isinstance(held, BaseException):
            if isinstance(taken, list):
                self._refund(taken, estimate)
            raise held
        if isinstance(taken, BaseException):
            self._give_back(spendings, cost, tokens)
            raise taken
        return taken

    def levels(self, key_id: str, tenant_name: str, user: str = "") -> list[Level]:
        key = self.keys.key(key_id)
        team = self.keys.team(tenant_name, key.team) if key is not None and key.team else None
        return levels(key, key_id, team, self.keys.tenant(tenant_name), tenant_name, user)

    def plan(self, key_id: str, tenant_name: str, now: float, user: str = "") -> Plan:
        """What a key's (and end user's) requests count against now: built once a second
        (a limit changed takes effect within it), so the request path pays a dict lookup,
        not period arithmetic."""
        second = int(now)
        if second != self._plans_at:
            self._plans, self._plans_at = {}, second
        found = self._plans.get((key_id, tenant_name, user))
        if found is None:
            found = self._plans[(key_id, tenant_name, user)] = self._build_plan(
                self.levels(key_id, tenant_name, user), now
            )
        return found

    def _build_plan(self, found: list[Level], now: float) -> Plan:
        return Plan(
            buckets=[
                b for level in found for b in _buckets(level.entry, level.owner, level.limits)
            ],
            spendings=self._build_spendings(found, now),
            caps=_caps(found),
        )

    def spendings(
        self, key_id: str, tenant_name: str, now: float, user: str = ""
    ) -> list[Spending]:
        """The budgets and quotas a key's requests count against now."""
        return self.plan(key_id, tenant_name, now, user).spendings

    def _build_spendings(self, found: list[Level], now: float) -> list[Spending]:
        out: list[Spending] = []
        s = self._subjects
        for level in found:
            for budget in level.budgets:
                at = period_key(budget.period, now)
                pool = Pool(
                    s.usage_aggregate(level.scope, level.ident, at, "cost"),
                    s.usage_hold(level.scope, level.ident, at, "cost"),
                    round(budget.max_usd * NANO),
                    "cost",
                )
                out.append(Spending(pool, level.owner, budget.period, budget))
            quota = level.quota
            if quota is not None:
                at = period_key(quota.period, now)
                pool = Pool(
                    s.usage_aggregate(level.scope, level.ident, at, "tokens"),
                    s.usage_hold(level.scope, level.ident, at, "tokens"),
                    quota.tokens,
                    "tokens",
                )
                out.append(Spending(pool, level.owner, quota.period))
        return out

    def _cost_hold(self, model: str, prompt: int, output: int) -> int:
        """Nano-USD to hold: the tokens at the dearest price among the model's deployments."""
        prices = self._prices.get(model)
        if prices is None:
            found = self.config.model(model)
            deployments = found.deployments if found is not None else []
            prices = self._prices[model] = (
                max((d.input_cost_per_mtok or 0.0 for d in deployments), default=0.0),
                max((d.output_cost_per_mtok or 0.0 for d in deployments), default=0.0),
            )
        return round((prompt * prices[0] + output * prices[1]) * 1000)  # per Mtok -> nano

    async def _reserve(self, spendings: list[Spending], cost: int, tokens: int) -> None:
        """Hold the request's estimate of every budget and the quota, or of none."""
        results = await asyncio.gather(
            *(self.holds.reserve(s.pool, _amount(s, cost, tokens)) for s in spendings),
            return_exceptions=True,
        )
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        refused = next(
            (
                (s, r)
                for s, r in zip(spendings, results, strict=True)
                if isinstance(r, Reserved) and not r.allowed
            ),
            None,
        )
        if failed is None and refused is None:
            return
        for s, r in zip(spendings, results, strict=True):
            if isinstance(r, Reserved) and r.allowed:
                self.holds.give_back(s.pool, _amount(s, cost, tokens))
        if refused is not None:
            raise _spent_error(refused[0], refused[1], time.time())
        assert failed is not None
        raise failed

    def _give_back(self, spendings: list[Spending], cost: int, tokens: int) -> None:
        for s in spendings:
            self.holds.give_back(s.pool, _amount(s, cost, tokens))

    def released(self, tenancy: Tenancy, now: float) -> dict[str, int]:
        """The counter increments that release a settled request's holds."""
        if not tenancy.hold_cost and not tenancy.hold_tokens:
            return {}
        return {
            s.pool.held: -_amount(s, tenancy.hold_cost, tenancy.hold_tokens)
            for s in self.spendings(tenancy.key_id, tenancy.tenant, now, tenancy.user)
        }

    async def release(self, tenancy: Tenancy) -> None:
        """Release the holds of a request no worker will settle (the cache answered it)."""
        await self.holds.release(self.released(tenancy, time.time()))

    async def check_spending(self, key_id: str, tenant_name: str) -> None:
        """Raise the 429 (``budget_exceeded``, ``quota_exceeded``) a request of this key
        would get for spending, without taking from its rate limits: batch lines use
        idle capacity and are not rate-limited, but budgets and quotas hold for them."""
        if self.keys.key(key_id) is None:
            return  # revoked since: the batch keeps running in its name
        now = time.time()
        for spending in self.spendings(key_id, tenant_name, now):
            spent, held = await self.holds.used(spending.pool)
            if spent + held >= spending.pool.limit:
                raise _spent_error(spending, Reserved(False, spent, held), now)

    def _refund(self, decisions: list[Decision], estimate: int) -> None:
        for d in decisions:
            self.limiter.adjust(d.bucket, -(1 if d.bucket.kind == "requests" else estimate))

    def _check_model(
        self, key: KeyRecord, team: TeamRecord | None, tenant: TenantRecord, model: str
    ) -> None:
        for owner, allowed in (
            (f"key {key.id}", key.models),
            (f"team {tenant.name}/{team.name}" if team else "", team.models if team else None),
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

    def buckets(self, key_id: str, tenant: str, user: str = "") -> list[Bucket]:
        """The rate-limit buckets a key's requests draw from (its own, its team's, its
        tenant's, and its end user's)."""
        return self.plan(key_id, tenant, time.time(), user).buckets

    async def _take(self, wanted: list[tuple[Bucket, int]]) -> list[Decision]:
        if not wanted:
            return []
        decisions = await self.limiter.take_all(wanted)
        refused = [d for d in decisions if not d.allowed]
        if refused:
            worst = max(refused, key=lambda d: d.retry_after_s)
            error = RateLimited(
                429,
                f"Rate limit reached for {worst.bucket.owner}: {worst.bucket.limit} "
                f"{worst.bucket.kind} per minute; retry in {math.ceil(worst.retry_after_s)}s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retryable=True,
                retry_after=worst.retry_after_s,
            )
            error.headers = rate_headers(decisions)
            raise error
        return decisions

    def settle(self, tenancy: Tenancy, tokens: int) -> None:
        """Replace the admission's token estimate with the reported usage (kept in this
        process's leases; written back with them)."""
        delta = tokens - tenancy.estimate
        if delta and tenancy.key_id != ANONYMOUS_KEY:
            for bucket in self.buckets(tenancy.key_id, tenancy.tenant, tenancy.user):
                if bucket.kind == "tokens":
                    self.limiter.adjust(bucket, delta)


def _caps(found: list[Level]) -> list[tuple[str, int, str]]:
    """(KV entry, limit, owner) of the ``max_inflight`` caps a request counts against."""
    return [
        (f"inflight.{level.entry}", level.limits.max_inflight, level.owner)
        for level in found
        if level.limits.max_inflight
    ]


def _buckets(entry: str, owner: str, limits: Limits) -> list[Bucket]:
    out = []
    if limits.rpm:
        burst = limits.rpm_burst or limits.rpm
        out.append(Bucket(f"{entry}.rpm", "requests", limits.rpm, burst, owner))
    if limits.tpm:
        burst = limits.tpm_burst or limits.tpm
        out.append(Bucket(f"{entry}.tpm", "tokens", limits.tpm, burst, owner))
    return out


def _amount(spending: Spending, cost: int, tokens: int) -> int:
    """A request's hold of one pool: never 0, or a free model's requests would pass
    from the lease after the budget was spent elsewhere."""
    return max(1, cost if spending.pool.unit == "cost" else tokens)


def _spent_error(spending: Spending, reserved: Reserved, now: float) -> BrokerError:
    """The 429 of a budget or quota that is used up (held counts: it is being spent)."""
    resets = period_end(spending.period, now)
    held = reserved.held
    if reserved.spent < spending.pool.limit:  # not spent, only held: it clears in seconds
        what = "budget" if spending.budget is not None else "token quota"
        return RateLimited(
            429,
            f"The {spending.owner}'s {spending.period} {what} is held in full by requests "
            "in flight; retry once they are answered.",
            type="insufficient_quota",
            code="budget_exceeded" if spending.budget is not None else "quota_exceeded",
            retryable=True,
            retry_after=1.0,
        )
    if spending.budget is not None:
        budget, spent = spending.budget, reserved.spent / NANO
        pending = f" and {usd(held / NANO)} held by requests in flight" if held > 0 else ""
        return RateLimited(
            429,
            f"The {spending.owner}'s {budget.period} budget is spent: limit "
            f"{usd(budget.max_usd)}, spent {usd(spent)}{pending}; it resets at "
            f"{_when(resets or now)}.",
            type="insufficient_quota",
            code="budget_exceeded",
            retry_after=max(1.0, (resets or now) - now),
        )
    pending = f" (and {held} held by requests in flight)" if held > 0 else ""
    when = f"it resets at {_when(resets)}" if resets else "it never resets"
    return RateLimited(
        429,
        f"The {spending.owner}'s {spending.period} token quota is used up: "
        f"{reserved.spent} of {spending.pool.limit} tokens{pending}; {when}.",
        type="insufficient_quota",
        code="quota_exceeded",
        retry_after=max(1.0, resets - now) if resets else None,
    )


def _wanted(buckets: list[Bucket], estimate: int) -> list[tuple[Bucket, int]]:
    """What a request takes from each bucket: one request, or its estimated tokens."""
    return [(b, 1 if b.kind == "requests" else max(1, estimate)) for b in buckets]
