"""workers/jobs.py: a job's trace context for each upstream attempt."""

from __future__ import annotations

from nats.aio.msg import Msg

from broker.observability import tracing
from schemas.envelope import RequestMeta
from workers.jobs import Job
from workers.lanes import Lane

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _job(traceparent: str | None, attempts: list[list[object]] | None = None) -> Job:
    meta = RequestMeta(request_id="r1", reply_to="inbox", traceparent=traceparent)
    return Job(Msg(None, subject="s"), meta, Lane.INTERACTIVE, attempts=attempts)  # type: ignore[arg-type]


def test_each_attempt_is_a_new_span_of_the_same_trace() -> None:
    job = _job(PARENT)
    first, second = job.next_hop(), job.next_hop()
    assert first and second and first != second
    for hop in (first, second):
        assert tracing.valid(hop)
        assert hop.split("-")[1] == PARENT.split("-")[1]


def test_attempts_are_kept_only_while_otel_records_them() -> None:
    recorded = _job(PARENT, attempts=[])
    hop = recorded.next_hop()
    assert recorded.attempts is not None and recorded.attempts[0][0] == hop
    assert _job(PARENT).attempts is None


def test_a_request_without_trace_context_sends_none() -> None:
    assert _job(None).next_hop() is None
