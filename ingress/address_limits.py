"""Requests per minute from one client address, and in all, at the door of every
``/v1/`` route (``ingress.per_ip_rpm``, ``ingress.global_rpm``): checked before the key
is, so a flood of anonymous calls or bad keys is refused as cheaply as it can be.

The buckets are the rate limiter's (broker/tenancy/ratelimit.py): kept in NATS and
leased per process, so the limits hold across every ingress replica within the bound
docs/tenancy.md states, and exactly within 64 requests of the limit. The address is
the connection's peer, or ``X-Forwarded-For`` when the peer is a trusted proxy
(uvicorn's ``FORWARDED_ALLOW_IPS``, 127.0.0.1 by default).
"""

from __future__ import annotations

import math

from starlette.responses import Response
from starlette.types import Scope

from broker.nats.subjects import kv_key
from broker.observability import metrics
from broker.tenancy.ratelimit import Bucket, Decision
from ingress.http_io import error_response
from ingress.state import Services
from schemas.config import IngressConfig
from schemas.errors import RateLimited


class AddressLimits:
    """The two limits' buckets; installed only when a limit is configured (no cost
    otherwise). ``ingress/fast_path.py`` asks it before every ``/v1/`` request."""

    def __init__(self, config: IngressConfig) -> None:
        self._per_ip = config.per_ip_rpm
        rpm = config.global_rpm
        self._global = Bucket("ingress.global.rpm", "requests", rpm, rpm) if rpm else None
        self._buckets: dict[str, Bucket] = {}  # address -> its bucket

    @staticmethod
    def configured(config: IngressConfig) -> AddressLimits | None:
        limited = config.per_ip_rpm is not None or config.global_rpm is not None
        return AddressLimits(config) if limited else None

    async def refusal(self, scope: Scope) -> Response | None:
        """The 429 for a request over a limit, else None (and the request counted)."""
        if not scope["path"].startswith("/v1/"):
            return None
        services: Services = scope["state"]["services"]
        limiter = services.admission.limiter
        address = scope["client"][0] if scope.get("client") else "-"
        wanted = [(bucket, 1) for bucket in self._for(address)]
        decisions = await limiter.take_all(wanted)
        refused = [d for d in decisions if not d.allowed]
        if not refused:
            return None
        error = _refusal(max(refused, key=lambda d: d.retry_after_s), address)
        metrics.REFUSED.labels(error.detail.code or "rate_limited").inc()
        return error_response(error)

    def _for(self, address: str) -> list[Bucket]:
        buckets = [self._global] if self._global is not None else []
        if self._per_ip is not None:
            bucket = self._buckets.get(address)
            if bucket is None:
                if len(self._buckets) > 100_000:  # a sweep of spoofed addresses: start over
                    self._buckets.clear()
                key = f"ingress.ip.{kv_key(address)}.rpm"
                bucket = self._buckets[address] = Bucket(
                    key, "requests", self._per_ip, self._per_ip
                )
            buckets.append(bucket)
        return buckets


def _refusal(decision: Decision, address: str) -> RateLimited:
    bucket = decision.bucket
    per_address = bucket.key.startswith("ingress.ip.")
    who = f"from {address}" if per_address else "to this gateway in all"
    wait = math.ceil(decision.retry_after_s)
    return RateLimited(
        429,
        f"Too many requests {who}: {bucket.limit} per minute; retry in {wait}s.",
        type="rate_limit_error",
        code="ip_rate_limit_exceeded" if per_address else "global_rate_limit_exceeded",
        retryable=True,
        retry_after=decision.retry_after_s,
    )
