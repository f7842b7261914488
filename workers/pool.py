"""One deployment's share of a model's queue: validate, call the provider, reply, ack.

Per request: refuse it if its deadline passed in the queue; hand it back if this
deployment already failed it; if the breaker is open, move it on (failover) or leave it
queued; otherwise call the provider with retries, and on a final failure move it on or
reply the error.

The pool never acks before the reply is published (or the request re-queued). Both go
out on the same connection, in that order, so NATS delivers the reply before it
processes the ack; a worker that dies in between leaves the request un-acked and
JetStream redelivers it after ``ack_wait``. The ack waits for JetStream's confirmation
and is repeated until it comes (broker/nats/acks.py): a stream leader dying mid-batch does
not make answered requests come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.nats import acks
from broker.nats.expiry import Expiry
from broker.observability import metrics, otel
from broker.responses import conversation
from broker.responses.chat_turn import ChatTurn
from broker.telemetry.counts import WORKER, Telemetry
from schemas.chat import (
    ChatCompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    UnknownFields,
    Usage,
    embedding_request_decoder,
)
from schemas.completions import CompletionRequest, decode_completion_request
from schemas.config import DeploymentConfig, ModelConfig, TransformConfig, WorkerConfig
from schemas.depth import decode_chat_request, decode_checked
from schemas.envelope import (
    H_CUSTOM_ID,
    H_DEPLOYMENT,
    H_FAILOVER_FROM,
    H_KIND,
    H_REQUEST_ID,
    H_STATUS,
    RESPONSES,
    TEXT_COMPLETIONS,
    ReplyKind,
    RequestMeta,
)
from schemas.errors import (
    BrokerError,
    CircuitOpen,
    ContextLengthExceeded,
    DeploymentFault,
    UpstreamError,
    circuit_open,
    deadline_exceeded,
    from_validation_error,
    internal_error,
    poison_request,
    unknown_field,
    upstream_error,
)
from schemas.line_block import H_LINES
from schemas.responses import ResponseRequest
from workers import embedding_reply
from workers.answered import AnsweredMemory
from workers.blocks import LineMsg, lines_of
from workers.breaker import CircuitBreaker
from workers.failover import Failover
from workers.jobs import Job, record_spans
from workers.lanes import Lane, PrioritySlots
from workers.metering import Accounting
from workers.pacing import Pacer
from workers.poison import PoisonGuard
from workers.providers.base import NativeResponses, Provider
from workers.replies import publish_reply, reply_error
from workers.retry import call_with_retries
from workers.tokens import Conversation, TokenMeter
from workers.transforms import Transforms

log = logging.getLogger(__name__)

T = TypeVar("T")
ModelRequest = Conversation | EmbeddingRequest


def is_deployment_fault(error: BrokerError) -> bool:
    """Failures that are the deployment's, not the request's: they count against its
    breaker and move the request to another deployment. Credentials and quota are per
    deployment; so is a provider failing in a way a retry may fix."""
    return isinstance(error, DeploymentFault) or (
        isinstance(error, UpstreamError) and error.retryable
    )


def _stamp_json(deployment: str, failed: tuple[str, ...]) -> bytes:
    info = {"deployment": deployment, "failover_from": list(failed)}
    return b'"x_promptbus":' + msgspec.json.encode(info) + b","


@dataclass(frozen=True, slots=True)
class PoolShared:
    """What every pool of a worker process works with: the connection, the settings and
    the process-wide guards (failover, poison detection, metering)."""

    nc: NATS
    acker: acks.AckConfirmer  # the connection's confirmed acks
    failover: Failover
    settings: WorkerConfig
    profiles: Mapping[str, TransformConfig] = field(default_factory=dict)
    poison: PoisonGuard | None = None
    accounting: Accounting | None = None
    answered: AnsweredMemory = field(default_factory=AnsweredMemory)
    telemetry: Telemetry | None = None  # counts for charts and alerts (broker/telemetry/)
    expiry: Expiry = field(default_factory=Expiry)  # deadlines and attempts' timeouts


_USAGE_ONLY = b'"choices":[]'  # the final chunk of a stream that reports usage
HAND_BACK_DELAY_S = 0.05  # a request this deployment already failed goes back this long
LATENCY_ALPHA = 0.2  # weight of the newest sample in the latency EWMA


class DeploymentPool:
    def __init__(
        self,
        deployment: DeploymentConfig,
        model: ModelConfig,
        provider: Provider,
        breaker: CircuitBreaker,
        shared: PoolShared,
        pacer: Pacer | None = None,
    ) -> None:
        self._nc = shared.nc
        self._acker = shared.acker
        self._expiry = shared.expiry
        self.slots = PrioritySlots(deployment.max_concurrency)
        self._pacer = pacer
        self._accounting = shared.accounting
        self._profiles = shared.profiles
        # the model's transformation profiles, if any
        transforms = Transforms.build(shared.profiles, model.transforms)
        self.transforms = transforms
        self._key_transforms: dict[tuple[str, ...], Transforms | None] = {}
        self.provider = provider
        # the adapter to hand Responses requests to as they are; None: they go as chat
        self._native: NativeResponses | None = None
        if deployment.responses_api == "native" and isinstance(provider, NativeResponses):
            self._native = provider
        self.deployment = deployment
        self.model = model
        self.breaker = breaker
        self._failover = shared.failover
        self.name = deployment.name
        ack_wait = shared.settings.ack_wait_s
        self._progress_every = max(ack_wait / 3, 0.5)
        self._ack_wait = ack_wait
        # How long an unstreamed answer can take at most: two attempts' timeouts, the
        # retry budget, and a margin for accounting and the reply.
        self._longest_answer_s = 2 * deployment.timeout_s + deployment.retry.max_time_s + 60
        self._max_reply_bytes = shared.settings.max_reply_bytes
        self._poison = shared.poison
        self._answered = shared.answered
        self._telemetry = shared.telemetry
        self._working: dict[int, tuple[Msg, float]] = {}  # id(msg) -> (msg, started)
        self._by_reply: dict[str, asyncio.Task[object]] = {}  # reply subject -> its task
        self._sweeper: asyncio.Task[None] | None = None
        self.latency_ewma_s: float | None = None
        self.retries = 0
        self.failovers = 0
        name = deployment.name
        # The name callers see: the deployment's, unless a transform renames it.
        shown = (transforms and transforms.response_deployment) or name
        self._shown = shown
        self._ok = {H_KIND: ReplyKind.RESPONSE.value, H_STATUS: "200", H_DEPLOYMENT: shown}
        self._chunk = {H_KIND: ReplyKind.CHUNK.value, H_STATUS: "200", H_DEPLOYMENT: shown}
        self._end = {H_KIND: ReplyKind.END.value, H_STATUS: "200", H_DEPLOYMENT: shown}
        self._stamp_plain = _stamp_json(shown, ())
        model_name = model.model_name
        self._m_ok = {
            lane: metrics.WORKER_REQUESTS.labels(model_name, name, "200", lane.value)
            for lane in Lane
        }
        self._m_queue_wait = {
            lane: metrics.QUEUE_WAIT.labels(model_name, lane.value) for lane in Lane
        }
        self._m_upstream = metrics.UPSTREAM_DURATION.labels(name, "false")
        self._m_upstream_stream = metrics.UPSTREAM_DURATION.labels(name, "true")
        self._m_retries = metrics.RETRIES.labels(name)
        self._m_failovers = metrics.FAILOVERS.labels(name)
        self._m_inflight = metrics.WORKER_INFLIGHT.labels(name)
        self._tokens = TokenMeter(deployment, model_name)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._keep_alive())

    def pull_capacity(self) -> int:
        """Requests to hold at once: the breaker's allowance, or, while it is open and
        nothing else would take this model's requests, enough to pass them on."""
        capacity = self.deployment.max_concurrency
        slots = self.breaker.slots(capacity)
        if slots == 0 and self._failover.can_bypass(self.model, self.name):
            return capacity
        return slots

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        await self.provider.aclose()

    # ------------------------------------------------------------ one request

    async def handle(self, msg: Msg) -> None:
        """An interactive request (``<prefix>.chat.<model>`` or a routed deployment queue)."""
        await self._handle(msg, Lane.INTERACTIVE)

    async def handle_batch(self, msg: Msg) -> None:
        """A batch-lane request, or a block of them: runs in slots no interactive request
        wants."""
        if msg.headers and H_LINES in msg.headers:
            await self._handle_block(msg)
        else:
            await self._handle(msg, Lane.BATCH)

    async def _handle_block(self, msg: Msg) -> None:
        """Every line of a block message at once (each waits for its slot), then one ack
        for the block: held, with in-progress acks, until every line is settled."""
        try:
            lines = lines_of(self._nc, msg)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("a block on %s is not a block of lines; dropped", msg.subject)
            await msg.term()
            return
        key = id(msg)
        self._working[key] = (msg, time.monotonic())
        try:
            await asyncio.gather(*map(self._handle_line, lines))
        finally:
            del self._working[key]
        if not any(line.elsewhere for line in lines):  # else that copy's ack settles it
            await self._ack(msg)

    async def _handle_line(self, line: LineMsg) -> None:
        """A line handed back (nak) waits here as long as the queue would have kept it."""
        while True:
            await self._handle(line, Lane.BATCH)
            if line.handed_back is None:
                return
            delay, line.handed_back = line.handed_back, None
            await asyncio.sleep(delay)

    async def _handle(self, msg: Msg, lane: Lane) -> None:
        meta = RequestMeta.from_headers(msg.headers)
        if not meta.reply_to:
            log.warning("request %s has no Pb-Reply-To header; dropped", meta.request_id)
            await msg.term()
            return
        line = msg if isinstance(msg, LineMsg) else None
        if self.name in meta.failed and line is None:
            await msg.nak(delay=HAND_BACK_DELAY_S)  # for another deployment of the alias
            return
        identity = acks.identity(msg.reply) if line is None else line.identity
        seen = self._answered.seen(identity)
        if seen is not None:
            # Delivered again after a restarted server lost the ack (answered here
            # already: acked unrun), or while this process holds another copy (whose
            # ack settles both): it does not run twice.
            metrics.REDELIVERED_ANSWERED.labels(self.model.model_name).inc()
            if seen == "answered":
                await self._ack(msg)
            elif line is not None:
                line.elsewhere = True
            return
        stored = identity[2] if identity is not None else None  # stored ns
        waited = None
        if stored is not None:
            waited = max(0.0, (time.time_ns() - stored) / 1e9)
            self._m_queue_wait[lane].observe(waited)
        if (
            meta.enqueue_by_ms is not None
            and stored is not None
            and stored // 1_000_000 > meta.enqueue_by_ms
        ):
            # Its publisher had given up waiting for the store and told its caller the
            # request failed (503, retry): running it now would run it twice.
            metrics.ABANDONED.labels(self.model.model_name).inc()
            await msg.term()
            return
        key = id(msg)
        self._working[key] = (msg, time.monotonic())
        self._answered.start(identity)
        cancellable = lane is Lane.INTERACTIVE  # batch lines share one reply subject
        if cancellable and (task := asyncio.current_task()) is not None:
            self._by_reply[meta.reply_to] = task
        self._m_inflight.inc()
        settled = True
        slots = self.slots
        job = Job(msg, meta, lane, waited_s=waited)
        traced = otel.enabled() and meta.traceparent is not None
        if traced:
            job.span_id, job.attempts, job.picked_ns = os.urandom(8).hex(), [], time.time_ns()
        try:
            if not slots.try_acquire(lane):
                await slots.acquire(lane)
            try:
                settled = await self._serve(job)
            except Exception as exc:  # a bug: answer it now rather than let the caller time out
                log.exception("request %s failed in %s", meta.request_id, self.name)
                await self._error(job, internal_error(exc))
            finally:
                slots.release(lane)
        finally:
            if cancellable:
                self._by_reply.pop(meta.reply_to, None)
            confirmation = None
            try:
                if settled and line is None:  # a line is settled with its block
                    # The ack leaves in the same write as the reply (never before it),
                    # and both leave before the bookkeeping below, which no longer holds
                    # the reply in the connection's buffer. Its confirmation is awaited last.
                    confirmation = await self._acker.send(msg, self._ack_wait)
                    await asyncio.sleep(0)
            finally:
                del self._working[key]
                self._m_inflight.dec()
                self._answered.finish(identity, settled)
                if job.grant is not None:
                    job.grant.finish()
                if traced:
                    record_spans(job, self.model.model_name, self.name, stored)
                if settled and not job.accounted and self._accounting is not None:
                    self._accounting.release(msg, job.meta)  # answered without usage
            if confirmation is not None:
                await self._confirmed(msg, confirmation)

    async def _ack(self, msg: Msg) -> None:
        """A confirmed ack, retried while ``ack_wait`` lasts: after a cluster node dies,
        an answered request must not be redelivered and answered (and billed) again.
        A line of a block is settled with its block."""
        if not isinstance(msg, LineMsg):
            await self._confirmed(msg, await self._acker.send(msg, self._ack_wait))

    async def _confirmed(self, msg: Msg, confirmation: acks.Confirmation) -> None:
        if not await confirmation.confirmed():
            log.warning("ack of %s not confirmed within ack_wait", msg.subject)

    def cancel(self, reply_to: str) -> bool:
        """Abandon the request answering to ``reply_to``: its caller went away. The
        provider call is cut (the HTTP connection closes) and the request is acked."""
        task = self._by_reply.get(reply_to)
        if task is None:
            return False
        task.cancel()
        return True

    async def _serve(self, job: Job) -> bool:
        """Answer or move the request on; False when it was left in the queue (nak)."""
        remaining = job.meta.remaining()
        if remaining is not None and remaining <= 0:
            await self._error(job, deadline_exceeded(0, "while the request waited in the queue"))
            return True
        vetted = await self._vet(job)
        if vetted is None:
            return True  # refused: the caller has its error
        if not self.breaker.allows():
            if await self._move_on(job, job.meta, context=False):
                return True
            # No alternative: leave it queued until the breaker lets requests through.
            wait = self.breaker.retry_after()
            await job.msg.nak(delay=min(wait, remaining) if remaining is not None else wait)
            return False
        if self._poison is not None:
            starts = await self._poison.starts(job.msg)
            if starts > self._poison.max_deliver:
                await self._poison.bury(job.msg, self.model.model_name, starts)
                await self._error(job, poison_request(starts - 1))
                return True
        await self._call(job, *vetted, remaining)
        return True

    async def _vet(self, job: Job) -> tuple[ModelRequest, UnknownFields] | None:
        """The request as the provider will get it: decoded and checked (a NATS caller's
        body was not checked at any door before), admitted, transformed. None once it was
        refused with an error reply."""
        request: ModelRequest
        unknown: UnknownFields = {}
        try:
            if self.model.mode == "embeddings":
                request = decode_checked(embedding_request_decoder, job.msg.data)
            else:
                if job.meta.api == TEXT_COMPLETIONS:
                    request, unknown = decode_completion_request(job.msg.data)
                elif job.meta.api == RESPONSES:
                    request = self._responses_request(job)
                else:
                    request, unknown = decode_chat_request(job.msg.data)
                native = not self.provider.forwards_unknown_fields
                if unknown and native and isinstance(request, ChatCompletionRequest):
                    raise unknown_field(next(iter(unknown)), self.deployment.provider)
            if self._accounting is not None:
                user = getattr(request, "user", None)  # the end user it names, if any
                job.meta, job.grant = await self._accounting.vet(
                    job.msg,
                    job.meta,
                    self.model.model_name,
                    user if isinstance(user, str) else None,
                )
        except BrokerError as exc:
            await self._error(job, exc)
            return None
        job.transforms = transforms = self._transforms_for(job.meta)
        if transforms is not None and isinstance(request, ChatCompletionRequest):
            try:
                request = transforms.request(request)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                await self._error(job, from_validation_error(exc))
                return None
        return request, unknown

    def _responses_request(self, job: Job) -> ChatCompletionRequest | ResponseRequest:
        """A Responses body as this deployment serves it: as it is to a native upstream,
        else as the chat request it means (``job.turn`` turns the answer back)."""
        request = conversation.decode_stateless(job.msg.data, "over NATS")
        if self._native is not None:
            return request
        job.turn = ChatTurn(request)
        return job.turn.chat

    async def _call(
        self,
        job: Job,
        request: ModelRequest,
        unknown: UnknownFields,
        remaining: float | None,
    ) -> None:
        """Call the provider within the deadline, with retries, and reply; a failure the
        deployment caused moves the request on, any other is the caller's answer."""
        meta = job.meta
        attempt_timeout = self._attempt_timeout(remaining)
        estimate = len(job.msg.data) // 4  # ~4 bytes a token: charged until usage is reported
        usage: Usage | None = None
        charged = False
        try:
            async with self._expiry.within(self._deadline_timer(request, remaining)):
                if self._pacer is not None:
                    await self._pacer.acquire(estimate)
                    charged = True
                if isinstance(request, EmbeddingRequest):
                    usage = await self._embed(job, request, remaining, attempt_timeout)
                elif request.stream:
                    usage = await self._stream(job, request, remaining, attempt_timeout, unknown)
                else:
                    body = await call_with_retries(
                        lambda: self._attempt(
                            self._answer(request, job.next_hop(), unknown), attempt_timeout, job=job
                        ),
                        self.deployment.retry,
                        remaining,
                        self._on_retry,
                    )
                    usage = self._tokens.count(body, request)
                    await self._account(job, usage)
                    if job.transforms is not None:
                        body = job.transforms.response(body)
                    if job.turn is not None:
                        body = job.turn.body(body)
                    body = self._stamp(body, meta)
                    await self._reply(meta, body, self._ok_headers(meta))
                    self._served(job)
        except BrokerError as exc:
            context = isinstance(exc, ContextLengthExceeded)
            movable = context or is_deployment_fault(exc) or isinstance(exc, CircuitOpen)
            if movable and await self._move_on(job, meta, context=context):
                return
            await self._error(job, exc)
        except TimeoutError:
            await self._error(
                job, deadline_exceeded(remaining or 0, "while the provider was answering")
            )
        finally:
            if charged and self._pacer is not None:
                self._pacer.correct(estimate, usage.total_tokens if usage else estimate)

    async def _move_on(self, job: Job, meta: RequestMeta, *, context: bool) -> bool:
        """Re-queue the request for the next deployment or fallback model, if any."""
        failed = (*meta.failed, self.name)
        target = self._failover.router.next_subject(self.model, failed, context=context)
        if target is None:
            return False
        await self._failover.forward(job.msg, meta, target, failed)
        job.accounted = True  # its holds travel with it
        self.failovers += 1
        self._m_failovers.inc()
        log.debug("request %s: %s failed, moved to %s", meta.request_id, self.name, target)
        return True

    # ------------------------------------------------------------ provider calls

    def _deadline_timer(self, request: ModelRequest, remaining: float | None) -> float | None:
        """The request's deadline as a timer, or None when nothing could outlast it: an
        answer that is not streamed, without a pacer's wait, takes at most two attempts'
        ``timeout_s`` and the retry budget. A batch line's 24 h deadline needs no timer
        of its own (5 µs a request)."""
        if remaining is None or self._pacer is not None:
            return remaining
        if isinstance(request, EmbeddingRequest) or not request.stream:
            if remaining > self._longest_answer_s:
                return None
        return remaining

    def _attempt_timeout(self, remaining: float | None) -> float | None:
        """None when the request's deadline, already enforced, comes first: one timer less."""
        timeout = self.deployment.timeout_s
        return timeout if remaining is None or timeout < remaining else None

    async def _attempt(
        self,
        call: Awaitable[T],
        timeout: float | None,
        *,
        stream: bool = False,
        job: Job | None = None,
    ) -> T:
        """One provider call under the per-attempt timeout, counted by the breaker."""
        if job is not None and job.attempts:
            try:
                return await self._attempt(call, timeout, stream=stream)
            except StopAsyncIteration:
                raise  # an empty stream: answered
            except BaseException as exc:
                code = exc.detail.code if isinstance(exc, BrokerError) else type(exc).__name__
                job.attempts[-1][3] = code or "error"
                raise
            finally:
                job.attempts[-1][2] = time.time_ns()
        if not self.breaker.allows():
            if inspect.iscoroutine(call):
                call.close()
            raise circuit_open(self.name, self.breaker.retry_after())
        self.breaker.begin()
        started = time.monotonic()
        try:
            async with self._expiry.within(timeout):
                result = await call
        except TimeoutError:
            error = upstream_error(
                504,
                self.name,
                f"no answer within the deployment's timeout_s ({self.deployment.timeout_s:g}s)",
                code="upstream_timeout",
            )
            await self.breaker.record_failure(error.detail.code or "timeout")
            metrics.ERRORS.labels(self.name, "upstream_timeout").inc()
            raise error from None
        except BrokerError as exc:
            metrics.ERRORS.labels(self.name, exc.detail.code or "error").inc()
            if is_deployment_fault(exc):
                await self.breaker.record_failure(exc.detail.code or "error")
            else:  # the deployment answered; the request itself was at fault
                self.breaker.record_success()
            raise
        except StopAsyncIteration:
            self.breaker.record_success()
            raise
        except asyncio.CancelledError:
            self.breaker.abandon()  # neither success nor failure: the caller left
            raise
        self.breaker.record_success()
        elapsed = time.monotonic() - started
        self._observe_latency(elapsed)
        (self._m_upstream_stream if stream else self._m_upstream).observe(elapsed)
        return result

    def _answer(
        self, request: Conversation, traceparent: str | None, unknown: UnknownFields
    ) -> Awaitable[bytes]:
        if isinstance(request, CompletionRequest):
            return self.provider.complete_text(request, traceparent, unknown)
        if isinstance(request, ResponseRequest):
            assert self._native is not None
            return self._native.respond(request, traceparent)
        return self.provider.complete(request, traceparent, unknown)

    def _chunks(
        self, request: Conversation, traceparent: str | None, unknown: UnknownFields
    ) -> AsyncIterator[bytes]:
        if isinstance(request, CompletionRequest):
            return self.provider.stream_text(request, traceparent, unknown)
        if isinstance(request, ResponseRequest):
            assert self._native is not None
            return self._native.stream_responses(request, traceparent)
        return self.provider.stream(request, traceparent, unknown)

    async def _stream(
        self,
        job: Job,
        request: Conversation,
        remaining: float | None,
        attempt_timeout: float | None,
        unknown: UnknownFields,
    ) -> Usage | None:
        """Retries happen only until the first chunk: after that, bytes reached the client.
        Returns the usage the stream reported, if any.

        The provider is always asked for usage (costs, budgets and token limits need it);
        a caller who did not ask for it does not get the usage-only chunk."""
        meta = job.meta
        relay_usage = True  # a Responses stream reports usage in its last event
        if not isinstance(request, ResponseRequest):
            options = request.stream_options
            relay_usage = options is not None and bool(options.include_usage)
            if not relay_usage:
                upstream_options = msgspec.structs.replace(
                    options or StreamOptions(), include_usage=True
                )
                request = msgspec.structs.replace(request, stream_options=upstream_options)

        async def open_stream() -> tuple[bytes | None, AsyncIterator[bytes]]:
            chunks = self._chunks(request, job.next_hop(), unknown).__aiter__()
            try:
                first = await self._attempt(anext(chunks), attempt_timeout, stream=True, job=job)
            except StopAsyncIteration:
                return None, chunks
            return first, chunks

        first, chunks = await call_with_retries(
            open_stream, self.deployment.retry, remaining, self._on_retry
        )
        headers = self._ok_headers(meta, kind=self._chunk)
        usage: Usage | None = None
        rename = job.transforms.response if job.transforms is not None else None
        turn = job.turn
        if first is not None:
            first = rename(first) if rename else first
            usage = self._tokens.count(first, request)
            if turn is None:
                await self._reply(meta, self._stamp(first, meta), headers)
            else:
                opening = turn.start() + turn.chunk(first)
                await self._reply(meta, self._stamp(opening[0], meta), headers)
                await self._replies(meta, opening[1:], headers)
            try:
                async for chunk in chunks:
                    counted = self._tokens.count(chunk, request)
                    if counted is not None:
                        usage = counted
                        if not relay_usage and _USAGE_ONLY in chunk:
                            continue  # asked for on the caller's behalf only
                    chunk = rename(chunk) if rename else chunk
                    if turn is None:
                        await self._reply(meta, chunk, headers)
                    else:
                        await self._replies(meta, turn.chunk(chunk), headers)
                if turn is not None:
                    await self._replies(meta, turn.finish(), headers)
            except BrokerError as exc:
                # Part of the answer was delivered: end the stream with the error, no
                # retry and no failover (the caller would see the start twice).
                await self.breaker.record_failure(exc.detail.code or "stream broken")
                await self._account(job, usage)
                await self._error(job, exc)
                return usage
        await self._account(job, usage)
        await self._reply(meta, b"", self._ok_headers(meta, kind=self._end))
        self._served(job)
        return usage

    @property
    def cost_usd(self) -> float:
        """What this deployment's answers cost so far, from their usage and its prices."""
        return self._tokens.cost_usd

    def _served(self, job: Job) -> None:
        self._m_ok[job.lane].inc()
        self._observe(job, 200)

    def _observe(self, job: Job, status: int) -> None:
        job.status = status
        telemetry = self._telemetry
        if telemetry is None:
            return
        usage, tenancy = job.usage, job.meta.tenancy
        telemetry.observe(
            WORKER,
            self.model.model_name,
            self.name,
            tenancy.tenant if tenancy is not None else "",
            status,
            time.monotonic() - job.started,
            wait_s=job.waited_s,
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
            cost_usd=job.cost_usd,
        )

    async def _account(self, job: Job, usage: Usage | None) -> None:
        if usage is not None:
            job.usage, job.cost_usd = usage, self._tokens.cost(usage)
        if self._accounting is not None and usage is not None:
            job.accounted = True
            cost = job.cost_usd
            await self._accounting.settle(job.meta, self.model.model_name, self.name, usage, cost)
            job.spent = True
            self._accounting.spend(
                job.meta,
                self.model.model_name,
                self.name,
                200,
                time.monotonic() - job.started,
                usage,
                cost,
            )

    async def _embed(
        self,
        job: Job,
        request: EmbeddingRequest,
        remaining: float | None,
        attempt_timeout: float | None,
    ) -> Usage:
        meta = job.meta
        result = await call_with_retries(
            lambda: self._attempt(
                self.provider.embed(request, job.next_hop()), attempt_timeout, job=job
            ),
            self.deployment.retry,
            remaining,
            self._on_retry,
        )
        tokens = result.usage.prompt_tokens
        usage = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
        self._tokens.add(usage)
        await self._account(job, usage)
        model = job.transforms.response_model if job.transforms is not None else None
        body = self._stamp(embedding_reply.reply_body(result, request, model), meta)
        await self._reply(meta, body, self._ok_headers(meta))
        self._served(job)
        return usage

    def _transforms_for(self, meta: RequestMeta) -> Transforms | None:
        """The model's transformation profiles, then the request's key's own."""
        names = self._accounting.key_transforms(meta) if self._accounting else ()
        if not names:
            return self.transforms
        found = self._key_transforms.get(names)
        if found is None:
            found = Transforms.build(self._profiles, [*self.model.transforms, *names])
            self._key_transforms[names] = found
        return found

    def _on_retry(self, error: BrokerError, wait: float) -> None:
        self.retries += 1
        self._m_retries.inc()
        log.debug("%s: retrying in %.2fs after %s", self.name, wait, error.detail.code)

    def _observe_latency(self, seconds: float) -> None:
        previous = self.latency_ewma_s
        self.latency_ewma_s = (
            seconds
            if previous is None
            else (LATENCY_ALPHA * seconds + (1 - LATENCY_ALPHA) * previous)
        )

    # ------------------------------------------------------------ replies

    def _stamp(self, body: bytes, meta: RequestMeta) -> bytes:
        """Name the answering deployment inside the JSON object too (response, or first
        chunk): ``"x_promptbus": {"deployment": ..., "failover_from": [...]}``. The body
        was validated as a non-empty JSON object, so splicing after its ``{`` is safe."""
        start = body.find(b"{")
        if start < 0:
            return body
        stamp = self._stamp_plain if not meta.failed else _stamp_json(self._shown, meta.failed)
        return body[: start + 1] + stamp + body[start + 1 :]

    async def _reply(self, meta: RequestMeta, body: bytes, headers: dict[str, str]) -> None:
        await publish_reply(self._nc, meta, body, headers, self._max_reply_bytes)

    async def _replies(
        self, meta: RequestMeta, bodies: list[bytes], headers: dict[str, str]
    ) -> None:
        for body in bodies:
            await self._reply(meta, body, headers)

    def _ok_headers(self, meta: RequestMeta, kind: dict[str, str] | None = None) -> dict[str, str]:
        headers = (kind or self._ok) | {H_REQUEST_ID: meta.request_id}
        if meta.custom_id is not None:
            headers[H_CUSTOM_ID] = meta.custom_id
        if meta.failed:
            headers[H_FAILOVER_FROM] = ",".join(meta.failed)
        return headers

    async def _error(self, job: Job, error: BrokerError) -> None:
        model, lane = self.model.model_name, job.lane.value
        metrics.WORKER_REQUESTS.labels(model, self.name, str(error.status), lane).inc()
        self._observe(job, error.status)
        await reply_error(self._nc, job.meta, error, self._shown)
        if self._accounting is not None and not job.spent:
            job.spent = True
            self._accounting.spend(
                job.meta,
                model,
                self.name,
                error.status,
                time.monotonic() - job.started,
                error=error.detail.code or "",
            )

    async def _keep_alive(self) -> None:
        """Tell JetStream that long requests are still being worked on, so that they are not
        redelivered: one sweep for the whole pool instead of a timer per request."""
        while True:
            await asyncio.sleep(self._progress_every)
            due = time.monotonic() - self._progress_every
            for msg, started in list(self._working.values()):
                if started < due:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
