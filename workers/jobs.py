"""One request while a pool holds it, and the OpenTelemetry spans it leaves behind.

A ``Job`` is passed from step to step of a pool (no ContextVars): what was decoded and
admitted, the answer's status and usage, and, with OpenTelemetry on, the worker's span
and each upstream attempt, recorded by :func:`record_spans` when the job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from broker.observability import otel, tracing
from broker.responses.chat_turn import ChatTurn
from broker.tenancy.admission import Grant
from schemas.chat import Usage
from schemas.envelope import RequestMeta
from workers.lanes import Lane
from workers.transforms import Transforms


@dataclass(slots=True)
class Job:
    """One request while a pool holds it, passed from step to step."""

    msg: Msg
    meta: RequestMeta
    lane: Lane
    transforms: Transforms | None = None
    accounted: bool = False  # its usage was recorded, or another pool has it now
    turn: ChatTurn | None = None  # a Responses request this deployment serves as chat
    grant: Grant | None = None  # admitted here (queued directly on NATS): its slots
    started: float = field(default_factory=time.monotonic)
    spent: bool = False  # its spend-log record is written
    waited_s: float | None = None  # in the queue, before this worker took it
    status: int = 0  # of its answer
    # OpenTelemetry on: the worker's span id and each upstream attempt's
    # [traceparent, start ns, end ns, error code] (broker/observability/otel.py)
    span_id: str = ""
    attempts: list[list[Any]] | None = None
    picked_ns: int = 0
    usage: Usage | None = None  # what it used, once accounted
    cost_usd: float = 0.0

    def next_hop(self) -> str | None:
        """The trace context of the next upstream attempt: same trace, a span of its own
        (a child of the worker's span, kept for OpenTelemetry when it is on)."""
        parent = self.meta.traceparent
        hop = tracing.child(parent) if parent else None
        if self.attempts is not None and hop is not None:
            self.attempts.append([hop, time.time_ns(), 0, ""])
        return hop


def record_spans(job: Job, model: str, deployment: str, stored_ns: int | None) -> None:
    """The job's spans in this worker: its wait in the queue, its service here and
    each upstream attempt (broker/observability/otel.py)."""
    parent = job.meta.traceparent
    assert parent is not None
    mine = f"00-{parent.split('-')[1]}-{job.span_id}-01"
    picked = job.picked_ns
    if stored_ns:
        otel.record_span(
            "queue wait", tracing.child(parent), parent, stored_ns, picked, {"model": model}
        )
    attributes = {
        "model": model,
        "deployment": deployment,
        "http.response.status_code": job.status,
        "promptbus.request_id": job.meta.request_id,
        "promptbus.lane": job.lane.value,
    }
    failed = str(job.status) if job.status >= 400 else None
    otel.record_span(
        f"worker {deployment}",
        mine,
        parent,
        picked,
        time.time_ns(),
        attributes,
        kind="consumer",
        error=failed,
    )
    for number, (hop, start, end, error) in enumerate(job.attempts or (), 1):
        otel.record_span(
            f"upstream {deployment}",
            hop,
            mine,
            start,
            end or time.time_ns(),
            {"deployment": deployment, "promptbus.attempt": number},
            kind="client",
            error=error or None,
        )
