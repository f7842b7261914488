"""The worker's side of tenancy: admit what NATS callers queued directly, then record
what every request used (tokens, cost) and correct its token-rate estimate."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from broker.nats.subjects import Subjects
from broker.spend import records
from broker.tenancy.admission import ANONYMOUS_KEY, DEFAULT_TENANT, Admission, Grant, bearer
from broker.tenancy.usage import UsageRecorder
from schemas.chat import Usage
from schemas.envelope import H_AUTHORIZATION, RequestMeta, Tenancy, deadline_after
from schemas.spend import SpendRecord

_ANONYMOUS = Tenancy(ANONYMOUS_KEY, DEFAULT_TENANT)


class Accounting:
    def __init__(self, admission: Admission, recorder: UsageRecorder) -> None:
        self.admission = admission
        self.recorder = recorder
        self._subjects = Subjects.of(admission.config)

    async def vet(
        self, msg: Msg, meta: RequestMeta, model: str, user: str | None = None
    ) -> tuple[RequestMeta, Grant | None]:
        """The request's meta with a vouched-for tenancy, and the grant of a request
        admitted here (``finish`` it when the worker lets go of the request); raises
        ``BrokerError`` (401, 403, 429) when a directly queued request may not run. A
        key or tenant at its ``max_inflight`` is refused at once (429, retry after a
        second): the request was pulled already, and waiting would hold a worker slot."""
        if not self.admission.required or self.admission.vouched(meta, msg.data):
            return meta, None  # without auth there is nothing to check (nor to vouch for)
        secret = bearer((msg.headers or {}).get(H_AUTHORIZATION))
        grant = await self.admission.admit(secret, model, len(msg.data) // 4, user=user)
        admitted = msgspec.structs.replace(meta, tenancy=grant.tenancy)
        if admitted.deadline_ms is None:  # its failover copies carry a signed expiry
            admitted = msgspec.structs.replace(
                admitted, deadline_ms=deadline_after(self.admission.config.nats.max_queue_age_s)
            )
        return self.admission.keys.vouch(admitted, msg.data), grant

    def spend(
        self,
        meta: RequestMeta,
        model: str,
        deployment: str,
        status: int,
        latency_s: float,
        usage: Usage | None = None,
        cost_usd: float = 0.0,
        error: str = "",
    ) -> None:
        """The request's spend-log record, with the next batch of usage."""
        if not self.admission.config.spend_log.enabled:
            return
        tenancy = meta.tenancy or _ANONYMOUS
        entry = SpendRecord(
            at=time.time(),
            request_id=meta.request_id,
            tenant=tenancy.tenant,
            key_id=tenancy.key_id,
            team=tenancy.team,
            user=tenancy.user,
            model=model,
            deployment=deployment,
            status=status,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=cost_usd,
            latency_ms=round(latency_s * 1000, 3),
            failover=len(meta.failed),
            experiment=meta.experiment or "",
            error=error,
        )
        records.record(self.recorder, self._subjects, entry)

    def key_transforms(self, meta: RequestMeta) -> tuple[str, ...]:
        """The transformation profiles of the request's key, if it has any."""
        tenancy = meta.tenancy
        if tenancy is None or tenancy.key_id == ANONYMOUS_KEY:
            return ()
        key = self.admission.keys.key(tenancy.key_id)
        return tuple(key.transforms) if key is not None else ()

    async def settle(
        self, meta: RequestMeta, model: str, deployment: str, usage: Usage, cost_usd: float
    ) -> None:
        """Record the usage: before the reply leaves when a budget or quota depends on it
        and was short of room at admission (the caller's next request must see it),
        batched otherwise."""
        tenancy = meta.tenancy or _ANONYMOUS
        record: dict[str, Any] = {
            "tenant": tenancy.tenant,
            "key_id": tenancy.key_id,
            "model": model,
            "deployment": deployment,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": cost_usd,
            "at": time.time(),
            "team": tenancy.team,
            "user": tenancy.user,
        }
        if tenancy.metered and not tenancy.settle_later:
            released = self.admission.released(tenancy, record["at"])
            await self.recorder.record_now(released, **record)
        else:
            # Unmetered, or every budget had room at admission: with the next batch, the
            # cost before the holds' release (broker/tenancy/holds.py: never under-counts).
            self.recorder.add(**record)
            if tenancy.metered:
                self.recorder.release(self.admission.released(tenancy, record["at"]))
        if tenancy.key_id != ANONYMOUS_KEY and usage.total_tokens != tenancy.estimate:
            self.admission.settle(tenancy, usage.total_tokens)

    def release(self, msg: Msg, meta: RequestMeta) -> None:
        """Release the holds of a request answered without usage (an error, a refusal,
        a cancellation), with the next batch of usage: only a tenancy a broker process
        signed, or anyone could release holds by sending headers."""
        tenancy = meta.tenancy
        if (
            tenancy is not None
            and tenancy.metered
            and self.admission.required
            and self.admission.keys.verify_tenancy(meta, msg.data)
        ):
            released = self.admission.released(tenancy, time.time())
            if released:
                self.recorder.release(released)
