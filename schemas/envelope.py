"""The internal envelope: what travels on NATS around an OpenAI body.

The message body is always the plain OpenAI JSON body; everything else rides in NATS
headers so that a client in any language can speak the contract (see docs/subjects.md).
``RequestMeta`` is the in-process view of the request headers, ``ReplyKind`` the reply's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from enum import StrEnum

from msgspec import Struct

# Request headers (client -> worker)

H_REQUEST_ID = "Pb-Request-Id"
H_REPLY_TO = "Pb-Reply-To"
H_DEADLINE = "Pb-Deadline"  # absolute deadline, Unix epoch milliseconds
H_TRACEPARENT = "traceparent"  # W3C trace context, passed through unchanged
H_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication, set to the request id
H_FAILED = "Pb-Failed"  # deployments that already failed this request (failover)
H_AUTHORIZATION = "Authorization"  # NATS callers: "Bearer sk-pb-..." (auth.required)
H_KEY_ID = "Pb-Key-Id"  # the admitted key's id (never the key)
H_TENANT = "Pb-Tenant"
H_TEAM = "Pb-Team"  # the admitted key's team, when it has one
H_END_USER = "Pb-End-User"  # the end user the request named (its `user`), when it did
H_TOKEN_ESTIMATE = "Pb-Token-Estimate"  # tokens charged at admission, corrected after
H_METERED = "Pb-Metered"  # "1": a budget or quota applies, record usage before replying;
# "2": one applies, but every one had room: usage goes with the next batch (0.2 s)
H_HOLD = "Pb-Hold"  # "<nano-USD> <tokens>": held of its budgets and quota, released after
H_ADMISSION = "Pb-Admission"  # HMAC by the admitting process: "already checked"
H_CUSTOM_ID = "Pb-Custom-Id"  # the caller's tag for the request, echoed on its replies
H_ENQUEUE_BY = "Pb-Enqueue-By"  # epoch ms: stored later, the caller was told it failed
H_ACCEPT_PARTS = "Pb-Accept-Parts"  # "1": the caller reassembles a reply sent in parts
H_API = "Pb-Api"  # the body's API when it is not chat (absent: chat)
H_EXPERIMENT = "Pb-Experiment"  # the experiment that routed it here (spend logs)
TEXT_COMPLETIONS = "completions"  # a legacy /v1/completions body
RESPONSES = "responses"  # a /v1/responses body, stateless (no previous_response_id)

# Reply headers (worker -> client)
H_KIND = "Pb-Kind"
H_STATUS = "Pb-Status"  # HTTP status the reply maps to
H_DEPLOYMENT = "Pb-Deployment"  # which deployment answered
H_ERROR_SOURCE = "Pb-Error-Source"  # "upstream" when the provider caused the error
H_FAILOVER_FROM = "Pb-Failover-From"  # deployments that failed before this one answered
H_SHOULD_RETRY = "Pb-Should-Retry"  # errors: "true" if the same request may succeed later
H_RETRY_AFTER = "Pb-Retry-After"  # errors: seconds to wait before retrying, when known
H_CACHE = "Pb-Cache"  # set by the client: "hit" or "miss" for cacheable requests
H_AGE = "Age"  # set by the client on cache hits: seconds since the answer was stored


class ReplyKind(StrEnum):
    """Value of the ``Pb-Kind`` reply header."""

    RESPONSE = "response"  # complete non-streamed response body
    CHUNK = "chunk"  # one chat.completion.chunk of a stream
    END = "end"  # end of stream marker, empty body
    PART = "part"  # a leading piece of a reply too large for one message (docs/subjects.md)
    ERROR = "error"  # OpenAI error body; ends the exchange


class RequestMeta(Struct, frozen=True):
    """Routing and lifetime information of one queued request."""

    request_id: str
    reply_to: str | None
    deadline_ms: int | None = None
    traceparent: str | None = None
    failed: tuple[str, ...] = ()
    tenancy: Tenancy | None = None  # set once the request was admitted
    custom_id: str | None = None  # echoed on replies: many requests can share a reply subject
    enqueue_by_ms: int | None = None  # the publisher gave up on a store later than this
    accepts_parts: bool = False  # a reply over one message may come in parts
    api: str | None = None  # TEXT_COMPLETIONS, RESPONSES; None: chat
    experiment: str | None = None  # the experiment whose split chose this model

    def to_headers(self) -> dict[str, str]:
        msg_id = self.request_id + (f":{len(self.failed)}" if self.failed else "")
        headers = {H_REQUEST_ID: self.request_id, H_MSG_ID: msg_id}
        if self.reply_to:
            headers[H_REPLY_TO] = self.reply_to
        if self.deadline_ms is not None:
            headers[H_DEADLINE] = str(self.deadline_ms)
        if self.traceparent:
            headers[H_TRACEPARENT] = self.traceparent
        if self.failed:
            headers[H_FAILED] = ",".join(self.failed)
        if self.tenancy is not None:
            headers.update(self.tenancy.to_headers())
        if self.custom_id is not None:
            headers[H_CUSTOM_ID] = self.custom_id
        if self.enqueue_by_ms is not None:
            headers[H_ENQUEUE_BY] = str(self.enqueue_by_ms)
        if self.accepts_parts:
            headers[H_ACCEPT_PARTS] = "1"
        if self.api is not None:
            headers[H_API] = self.api
        if self.experiment is not None:
            headers[H_EXPERIMENT] = self.experiment
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> RequestMeta:
        headers = headers or {}
        deadline = headers.get(H_DEADLINE)
        deadline_ms: int | None
        try:
            deadline_ms = int(deadline) if deadline else None
        except ValueError:
            deadline_ms = None
        failed = headers.get(H_FAILED)
        enqueue_by = headers.get(H_ENQUEUE_BY)
        return cls(
            request_id=headers.get(H_REQUEST_ID) or headers.get(H_MSG_ID) or "",
            reply_to=headers.get(H_REPLY_TO),
            deadline_ms=deadline_ms,
            traceparent=headers.get(H_TRACEPARENT),
            failed=tuple(failed.split(",")) if failed else (),
            tenancy=Tenancy.from_headers(headers) if H_ADMISSION in headers else None,
            custom_id=headers.get(H_CUSTOM_ID),
            enqueue_by_ms=int(enqueue_by) if enqueue_by and enqueue_by.isdigit() else None,
            accepts_parts=headers.get(H_ACCEPT_PARTS) == "1",
            api=headers.get(H_API),
            experiment=headers.get(H_EXPERIMENT),
        )

    def remaining(self, now_ms: int | None = None) -> float | None:
        """Seconds left before the deadline (negative once passed), None without one."""
        if self.deadline_ms is None:
            return None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return (self.deadline_ms - now_ms) / 1000.0


def deadline_after(seconds: float) -> int:
    """The absolute ``Pb-Deadline`` value for a timeout starting now."""
    return int((time.time() + seconds) * 1000)


class Tenancy(Struct, frozen=True):
    """Who an admitted request belongs to, vouched for by ``signature`` (see
    broker/tenancy/admission.py): workers trust it instead of checking the key again."""

    key_id: str
    tenant: str
    estimate: int = 0
    metered: bool = False
    signature: str = ""
    hold_cost: int = 0  # nano-USD held of each budget until the worker settles
    hold_tokens: int = 0  # tokens held of the tenant's quota
    team: str = ""  # the key's team ("" none)
    user: str = ""  # the end user (schemas.tenancy.end_user_id), "" none
    # Metered, but every budget and quota had half its limit free at admission: the
    # worker records its usage and releases its holds with the next batch (0.2 s).
    settle_later: bool = False

    def metered_value(self) -> str:
        """``Pb-Metered``: "0" not metered, "1" settled before the reply, "2" later."""
        return ("2" if self.settle_later else "1") if self.metered else "0"

    def signed_part(
        self, request_id: str, reply_to: str | None, deadline_ms: int | None, body: bytes
    ) -> str:
        """What the admission signature covers besides the body, which follows it into the
        MAC (``KeyStore.sign``): who, and this very request (its body's length, where its
        replies go, until when it may run), so that headers sniffed from one request
        vouch for no other (another body, another reply subject, after its deadline)."""
        return (
            f"{request_id}|{self.key_id}|{self.tenant}|{self.estimate}|{self.metered_value()}"
            f"|{self.hold_cost}|{self.hold_tokens}|{self.team}|{self.user}"
            f"|{reply_to or ''}|{deadline_ms or ''}|{len(body)}|"
        )

    def to_headers(self) -> dict[str, str]:
        headers = {
            H_KEY_ID: self.key_id,
            H_TENANT: self.tenant,
            H_TOKEN_ESTIMATE: str(self.estimate),
            H_METERED: self.metered_value(),
            H_ADMISSION: self.signature,
        }
        if self.hold_cost or self.hold_tokens:
            headers[H_HOLD] = f"{self.hold_cost} {self.hold_tokens}"
        if self.team:
            headers[H_TEAM] = self.team
        if self.user:
            headers[H_END_USER] = self.user
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Tenancy:
        try:
            estimate = int(headers.get(H_TOKEN_ESTIMATE) or 0)
        except ValueError:
            estimate = 0
        hold_cost = hold_tokens = 0
        metered = headers.get(H_METERED)
        with contextlib.suppress(ValueError):  # a forged one fails the signature anyway
            cost, _, tokens = (headers.get(H_HOLD) or "0 0").partition(" ")
            hold_cost, hold_tokens = max(0, int(cost)), max(0, int(tokens))
        return cls(
            key_id=headers.get(H_KEY_ID, ""),
            tenant=headers.get(H_TENANT, ""),
            estimate=estimate,
            metered=metered in ("1", "2"),
            signature=headers.get(H_ADMISSION, ""),
            hold_cost=hold_cost,
            hold_tokens=hold_tokens,
            team=headers.get(H_TEAM, ""),
            user=headers.get(H_END_USER, ""),
            settle_later=metered == "2",
        )


_ID_PREFIX = os.urandom(8).hex()  # this process's, random: ids unique across processes
_id_counter = itertools.count()


def new_request_id() -> str:
    """A request id, 32 hex digits like a UUID's: this process's random prefix and a
    counter (a tenth of ``uuid4().hex``'s cost, paid on every request)."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"
