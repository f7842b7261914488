"""The Python request-reply client: OpenAI requests over NATS, no HTTP involved.

    client = await BrokerClient.connect(config)
    completion = await client.chat({"model": "mock-gpt", "messages": [...]})
    async for chunk in client.chat_stream({... "stream": True}):
        ...

The ingress is a thin HTTP skin over this class. One connection, one wildcard inbox
subscription for every reply (like nats.py's request mux), one JetStream publish per
request: no per-request subscriptions or connection set-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionReconnectingError, MaxPayloadError, OutboundBufferLimitError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.cache.answers import AnswerCache
from broker.cache.exact import Cacheable, CachePolicy, chunks_from_completion
from broker.nats.connection import close as close_connection
from broker.nats.connection import connect
from broker.nats.credentials import Login, Role, login_for, tenant_login
from broker.nats.expiry import Expiry
from broker.nats.provision import (
    ensure_bucket,
    provision,
)
from broker.nats.subjects import BREAKERS, WORKERS, Subjects, bucket
from broker.nats.tls import client_context
from broker.routing.breaker_board import BreakerRecords
from broker.routing.presence import WorkerDirectory
from broker.routing.router import Router
from schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    chunk_decoder,
    completion_decoder,
    embedding_list_decoder,
    encoder,
)
from schemas.completions import CompletionRequest, TextCompletion, text_completion_decoder
from schemas.config import HEADER_ROOM, Config
from schemas.envelope import (
    H_AUTHORIZATION,
    H_CACHE,
    H_DEPLOYMENT,
    H_ENQUEUE_BY,
    H_KIND,
    H_MSG_ID,
    H_REPLY_TO,
    H_RETRY_AFTER,
    H_SHOULD_RETRY,
    H_STATUS,
    RESPONSES,
    TEXT_COMPLETIONS,
    ReplyKind,
    RequestMeta,
    Tenancy,
    deadline_after,
    new_request_id,
)
from schemas.errors import (
    BrokerError,
    deadline_exceeded,
    from_validation_error,
    no_capacity,
    queue_unavailable,
    request_too_large,
)

# Time granted past the deadline for the worker's own, more precise, 504 to arrive.
DEADLINE_GRACE_S = 0.25
REASK_AFTER_S = 2.5  # after our reconnect: the workers' replies held back 1.5 s arrive first
REASK_FOR_S = 60.0  # how long to keep asking while the stream does not answer
# How long JetStream may take to confirm it stored a request.
PUBLISH_ACK_TIMEOUT_S = 10.0  # covers a reconnect and a stream leader election
PUBLISH_ATTEMPT_S = 2.0  # one publish's wait for its ack before sending it again


DEFAULT_NAMESPACE = "default"  # the cache namespace of requests without a tenant


class Ask(NamedTuple):
    """One request as the client queues it: what ``request`` and ``open_stream`` take as
    keywords, passed on as one value."""

    model: str
    body: bytes
    timeout: float  # seconds, already bounded by ingress.max_timeout_s
    request_id: str | None = None
    traceparent: str | None = None
    tenancy: Tenancy | None = None
    mode: str = "chat"  # or "embeddings"; TEXT_COMPLETIONS, RESPONSES are queued with chat
    unable: tuple[str, ...] = ()  # deployments that cannot serve it (capabilities)
    experiment: str | None = None  # the experiment whose split chose ``model``


class Reply(NamedTuple):
    """One reply message: HTTP-like status, NATS headers and the OpenAI JSON body."""

    status: int
    kind: ReplyKind
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def from_msg(cls, msg: Msg) -> Reply:
        headers = msg.headers or {}
        try:
            kind = ReplyKind(headers.get(H_KIND, "response"))
        except ValueError:
            kind = ReplyKind.ERROR
        status = int(headers.get(H_STATUS, "200"))
        return cls(status, kind, headers, msg.data)

    def raise_for_error(self) -> None:
        if self.kind is ReplyKind.ERROR:
            retry_after = self.headers.get(H_RETRY_AFTER)
            raise BrokerError.from_json(
                self.status,
                self.body,
                retryable=self.headers.get(H_SHOULD_RETRY) == "true",
                retry_after=float(retry_after) if retry_after else None,
            )


class ReplyStream:
    """The chunk messages of one streamed request, in order, ending at the end marker.

    A deque and one waiter, not an ``asyncio.Queue`` under ``wait_for``: that cost a
    task and a timer per chunk; a chunk already here is taken without waiting, and a
    wait ends at the deadline through the client's one sweeper (``Expiry``)."""

    def __init__(self, client: BrokerClient, token: str, timeout: float) -> None:
        self._client = client
        self._token = token
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout + DEADLINE_GRACE_S
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False

    def put(self, reply: Reply) -> None:
        """A reply arrived (called by the client's subscription, or with a cached answer)."""
        self._replies.append(reply)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> Reply:
        if self._done:
            raise StopAsyncIteration
        replies = self._replies
        while not replies:
            remaining = self._deadline - time.monotonic()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._client._expiry.wait(self._waiter, max(remaining, 0.001))
            except TimeoutError:
                self.close()
                raise deadline_exceeded(self._timeout, "while waiting for the stream") from None
            finally:
                self._waiter = None
        reply = replies.popleft()
        if reply.kind is ReplyKind.CHUNK:
            return reply
        self.close()
        reply.raise_for_error()
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop listening; a stream closed before its end also cancels the work upstream
        (the caller went away: no reason to keep paying for tokens)."""
        if not self._done:
            self._client._cancel(self._token)
        self._done = True
        self._client._pending.pop(self._token, None)


_Pending = asyncio.Future[Reply] | ReplyStream


class BrokerClient:
    def __init__(
        self,
        nc: NATS,
        config: Config,
        directory: WorkerDirectory,
        breakers: BreakerRecords,
        *,
        cache: AnswerCache | None = None,
        owns_connection: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.api_key = api_key  # sent with each request when auth.required is on
        self.url: str | None = None  # the servers it connected to (None: a shared connection)
        # Signs an admitted request's tenancy as it is queued (the ingress sets it:
        # ``KeyStore.vouch``); without it a tenancy travels as given.
        self.vouch: Callable[[RequestMeta, bytes], RequestMeta] | None = None
        # Told of an admitted request the cache answered, so its holds on budgets are
        # released (the ingress sets it: ``Admission.release``); no worker will.
        self.unqueued: Callable[[Tenancy], Awaitable[None]] | None = None
        self.cache = cache
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config
        self.subjects = Subjects.of(config)
        self.directory = directory
        self.breakers = breakers
        self.router = Router(config, self.subjects, directory, breakers.state)
        self._owns_connection = owns_connection
        self._pending: dict[str, _Pending] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._sub: Subscription | None = None
        self._sent: dict[str, _Sent] = {}  # token -> how to ask again (non-streamed requests)
        self._parts: dict[str, list[bytes]] = {}  # token -> leading pieces of a large reply
        self._reasker: asyncio.Task[None] | None = None
        self.reasked = 0  # requests asked again after a reply was lost in a reconnect
        self._reasks = True  # a tenant's connection may not read the stream to re-ask
        self._expiry = Expiry()  # the deadlines of publish acks and replies

    @classmethod
    async def connect(
        cls,
        config: Config,
        url: str | None = None,
        *,
        name: str = "promptbus-client",
        api_key: str | None = None,
        login: Login | None = None,
    ) -> BrokerClient:
        """Connect, make sure the stream exists and start following worker presence.

        ``api_key``: a virtual key (``promptbus keys create``) when auth is required. With
        one and no ``login``, the client logs in to NATS as that key's tenant (the auth
        callout checks it, ``broker/tenancy/nats_access.py``): it may then only publish
        requests for the key's models and read its own replies, so it neither provisions
        streams nor shares the answer cache. Without a key it logs in as an ingress."""
        tenant = login is None and api_key is not None
        if login is None:
            if api_key:
                login = tenant_login(api_key).over(client_context(config.nats.tls))
            else:
                login = login_for(config, Role.INGRESS)
        url = url or config.nats.url or _embedded_url(config)
        nc = await connect(url, name, login)
        try:
            client = await cls.over(nc, config, owns_connection=True, tenant=tenant)
            client.api_key = api_key
            client.url = url
            return client
        except BaseException:
            await nc.close()
            raise

    @classmethod
    async def over(
        cls, nc: NATS, config: Config, *, owns_connection: bool = False, tenant: bool = False
    ) -> BrokerClient:
        """A client on an existing connection (the all-in-one process shares one).
        ``tenant``: the connection is a tenant's, which may read only the presence and
        breaker buckets (no provisioning, no answer cache, no re-asking from the stream)."""
        js = nc.jetstream()
        subjects = Subjects.of(config)
        cache: AnswerCache | None = None
        if tenant:
            workers = await js.key_value(bucket(config.nats.subject_prefix, WORKERS))
            records = await js.key_value(bucket(config.nats.subject_prefix, BREAKERS))
        else:
            await provision(js, config, subjects)
            workers = await ensure_bucket(js, config, WORKERS)
            records = await ensure_bucket(js, config, BREAKERS)
            cache = await AnswerCache.open(js, config)
        directory = WorkerDirectory(workers, config.worker.presence_ttl_s)
        breakers = BreakerRecords(records)
        await directory.start()
        await breakers.start()
        client = cls(nc, config, directory, breakers, cache=cache, owns_connection=owns_connection)
        client._reasks = not tenant
        await client._start()
        return client

    async def _start(self) -> None:
        self._prefix = self.nc.new_inbox()
        self._prefix_len = len(self._prefix) + 1
        self._sub = await self.nc.subscribe(f"{self._prefix}.>", cb=self._on_reply)
        if self._reasks:
            self._reasker = asyncio.create_task(self._reask_after_reconnects())

    async def close(self) -> None:
        if self._reasker is not None:
            self._reasker.cancel()
        await self._expiry.close()
        if self.cache is not None:
            await self.cache.close()
        await self.directory.stop()
        await self.breakers.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for pending in self._pending.values():
            if isinstance(pending, asyncio.Future) and not pending.done():
                pending.cancel()
        self._pending.clear()
        if self._owns_connection:
            await close_connection(self.nc)

    async def _reask_after_reconnects(self) -> None:
        """Replies are core NATS: one sent while our connection was being re-established
        reached nobody, and its request is already acked. After each reconnect, ask the
        stream about every request still unanswered: gone from the stream means answered
        (or moved on) and the answer lost, so it is asked again under a new message id."""
        reconnects = self.nc.stats["reconnects"]
        while True:
            await asyncio.sleep(0.5)
            if self.nc.stats["reconnects"] == reconnects:
                continue
            reconnects = self.nc.stats["reconnects"]
            give_up = time.monotonic() + REASK_FOR_S
            while time.monotonic() < give_up:  # until one sweep gets every answer
                await asyncio.sleep(REASK_AFTER_S)
                tokens = [t for t in self._sent if _waiting(self._pending.get(t))]
                failed = 0
                for start in range(0, len(tokens), 256):
                    results = await asyncio.gather(
                        *(self._reask(t) for t in tokens[start : start + 256]),
                        return_exceptions=True,
                    )
                    failed += sum(isinstance(r, Exception) for r in results)
                if not failed:  # a leader election makes the stream answer late
                    break

    async def _reask(self, token: str) -> None:
        sent = self._sent.get(token)
        if sent is None:
            return
        try:
            await self.js.get_msg(self.subjects.stream, sent.seq)
            return  # still queued or being worked on: its reply will come
        except NotFoundError:
            pass
        if not _waiting(self._pending.get(token)):
            return
        headers = {
            **sent.headers,
            H_MSG_ID: f"{sent.headers[H_MSG_ID]}.{sent.seq}",
            H_ENQUEUE_BY: str(deadline_after(PUBLISH_ACK_TIMEOUT_S)),
        }
        seq = await self._publish_until_acked(
            sent.subject, sent.body, headers, f"{token}.r", sent.timeout
        )
        self._sent[token] = sent._replace(headers=headers, seq=seq)
        self.reasked += 1

    def _cancel(self, token: str) -> None:
        """Tell the worker holding request ``token`` to drop it (best effort)."""
        if self.nc.is_closed:
            return
        headers = {H_REPLY_TO: f"{self._prefix}.{token}"}
        task = asyncio.ensure_future(self.nc.publish(self.subjects.cancel, b"", headers=headers))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _on_reply(self, msg: Msg) -> None:
        """Route a message on our inbox: ``<prefix>.<token>`` replies, ``.<token>.a`` acks."""
        key = msg.subject[self._prefix_len :]
        pending = self._pending.get(key)
        if pending is None:
            self._parts.pop(key, None)
            return  # late reply for a request that timed out or was cancelled
        headers = msg.headers
        if headers is not None and headers.get(H_KIND) == ReplyKind.PART:
            parts = self._parts.setdefault(key, [])
            parts.append(msg.data)
            return
        if self._parts and key in self._parts:  # the last piece of a reply sent in parts
            msg.data = b"".join([*self._parts.pop(key), msg.data])
        if isinstance(pending, ReplyStream):
            pending.put(Reply.from_msg(msg))
        elif not pending.done():
            pending.set_result(Reply.from_msg(msg))

    # ------------------------------------------------------------ limits

    @property
    def max_body_bytes(self) -> int:
        """The largest request body this client can queue: the configured limit, and never
        more than the connected server's ``max_payload`` carries beside the headers."""
        configured = self.config.ingress.max_body_bytes or self.nc.max_payload
        return max(0, min(configured, self.nc.max_payload - HEADER_ROOM))

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.config.ingress.default_timeout_s
        return min(timeout, self.config.ingress.max_timeout_s)

    async def _publish(self, ask: Ask, pending: _Pending, token: str) -> None:
        """Queue the request in JetStream and wait for the stream's publish ack.

        The ack arrives on our own inbox (``<prefix>.<token>.a``) like every reply, so
        a request costs one subscription-free round trip before the worker's answer.
        """
        api = ask.mode if ask.mode in (TEXT_COMPLETIONS, RESPONSES) else None
        subject, failed = self.router.route(ask.model, "chat" if api else ask.mode, ask.unable)
        timeout, tenancy = ask.timeout, ask.tenancy
        meta = RequestMeta(
            request_id=ask.request_id or new_request_id(),
            reply_to=f"{self._prefix}.{token}",
            deadline_ms=deadline_after(timeout),
            traceparent=ask.traceparent,
            failed=failed,
            tenancy=tenancy,
            # Stored after this, the request was reported failed (503): workers drop it.
            enqueue_by_ms=deadline_after(min(timeout, PUBLISH_ACK_TIMEOUT_S)),
            accepts_parts=True,
            api=api,
            experiment=ask.experiment,
        )
        if self.vouch is not None and tenancy is not None:
            meta = self.vouch(meta, ask.body)
        ack_key = f"{token}.a"
        self._pending[token] = pending
        try:
            headers = meta.to_headers()
            # De-duplicate our own publish only: a caller's request id may repeat (the
            # x-request-id of two HTTP requests), and each must be answered.
            headers[H_MSG_ID] = f"{self._prefix}.{token}"
            if self.api_key and tenancy is None:  # a NATS caller: the worker checks it
                headers[H_AUTHORIZATION] = f"Bearer {self.api_key}"
            seq = await self._publish_until_acked(subject, ask.body, headers, ack_key, timeout)
            if isinstance(pending, asyncio.Future):
                self._sent[token] = _Sent(subject, ask.body, headers, seq, timeout)
        except BaseException:
            self._pending.pop(token, None)
            raise

    async def _publish_until_acked(
        self, subject: str, body: bytes, headers: dict[str, str], ack_key: str, timeout: float
    ) -> int:
        """Publish until JetStream acks, within ``PUBLISH_ACK_TIMEOUT_S``.

        A nats-server that dies or a stream leader that moves (a cluster node restarting)
        swallows a publish; sending it again is safe because the ``Nats-Msg-Id`` makes the
        stream drop a copy it already holds, so the request is queued exactly once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, PUBLISH_ACK_TIMEOUT_S)
        reason = "no publish acknowledgement from JetStream"
        try:
            while (left := deadline - loop.time()) > 0:
                if not self.nc.is_connected:
                    # Not into nats-py's reconnect buffer: sent after we reported the
                    # request failed, it would run anyway (Pb-Enqueue-By catches the
                    # few publishes already buffered when the connection dropped).
                    reason = "not connected to NATS"
                    await asyncio.sleep(min(0.1, left))
                    continue
                ack: asyncio.Future[Reply] = loop.create_future()
                self._pending[ack_key] = ack
                try:
                    await self.nc.publish(
                        subject, body, reply=f"{self._prefix}.{ack_key}", headers=headers
                    )
                except MaxPayloadError:
                    raise request_too_large(self.max_body_bytes) from None
                except (OutboundBufferLimitError, ConnectionReconnectingError):
                    reason = "not connected to NATS"
                    await asyncio.sleep(min(0.1, max(0.0, left)))
                    continue
                try:
                    reply = await self._expiry.wait(ack, min(left, PUBLISH_ATTEMPT_S))
                except TimeoutError:
                    continue
                if reply.headers.get("Status") != "503":
                    return _check_publish_ack(reply)
                reason = "no stream listens on the request subject"  # or no leader yet
                await asyncio.sleep(min(PUBLISH_ATTEMPT_S / 4, max(0.0, left)))
            raise queue_unavailable(reason)
        finally:
            self._pending.pop(ack_key, None)

    # ------------------------------------------------------------ raw bytes API

    async def request(
        self,
        model: str,
        body: bytes,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
        parsed: Cacheable | None = None,
        cache_control: str | None = None,
        tenancy: Tenancy | None = None,
        mode: str = "chat",
        unable: tuple[str, ...] = (),
        experiment: str | None = None,
    ) -> Reply:
        """Queue one non-streamed request and wait for its reply (an error reply included).

        ``mode`` is ``embeddings`` for a ``/v1/embeddings`` body (never cached), and
        ``completions`` (``TEXT_COMPLETIONS``) for a legacy ``/v1/completions`` body,
        ``responses`` (``RESPONSES``) for a stateless ``/v1/responses`` body.

        With ``parsed`` (the decoded ``body``), the response cache may answer instead;
        ``cache_control`` is the caller's ``Cache-Control`` header. The reply's ``Pb-Cache``
        header says ``hit`` or ``miss`` whenever the request was cacheable. ``tenancy``
        is what admission granted (the ingress); each tenant has its own cache.
        """
        ask = Ask(
            model,
            body,
            self._timeout(timeout),
            request_id,
            traceparent,
            tenancy,
            mode,
            unable,
            experiment,
        )
        namespace = tenancy.tenant if tenancy else DEFAULT_NAMESPACE
        cache = self.cache
        key = cache.key(model, parsed, namespace) if cache is not None else None
        if key is None:
            return await self._request(ask)
        assert cache is not None and parsed is not None
        policy = CachePolicy.parse(cache_control)
        remembered = None  # what the semantic cache needs to store this answer
        if policy.lookup:
            hit, headers, remembered = await cache.look_up(key, policy, model, parsed, namespace)
            if hit is not None:
                if self.unqueued is not None and tenancy is not None:
                    await self.unqueued(tenancy)
                return Reply(200, ReplyKind.RESPONSE, headers, hit.body)
        reply = await self._request(ask)
        if policy.store and reply.status == 200 and reply.kind is ReplyKind.RESPONSE:
            deployment = reply.headers.get(H_DEPLOYMENT, "")
            await cache.store(key, model, reply.body, deployment, remembered)
        return reply._replace(headers={**reply.headers, H_CACHE: "miss"})

    async def _request(self, ask: Ask) -> Reply:
        token = str(next(self._tokens))
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        await self._publish(ask, future, token)
        try:
            return await self._expiry.wait(future, ask.timeout + DEADLINE_GRACE_S)
        except TimeoutError:
            raise deadline_exceeded(ask.timeout, "before a worker replied") from None
        finally:
            self._pending.pop(token, None)
            self._sent.pop(token, None)

    async def open_stream(
        self,
        model: str,
        body: bytes,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
        parsed: ChatCompletionRequest | None = None,
        cache_control: str | None = None,
        tenancy: Tenancy | None = None,
        mode: str = "chat",
        unable: tuple[str, ...] = (),
        experiment: str | None = None,
    ) -> ReplyStream:
        """Queue one streamed request; iterate the result for its chunk replies.

        With ``cache.streams`` on and ``parsed`` given, a cached answer is replayed instead.
        """
        ask = Ask(
            model,
            body,
            self._timeout(timeout),
            request_id,
            traceparent,
            tenancy,
            mode,
            unable,
            experiment,
        )
        token = str(next(self._tokens))
        stream = ReplyStream(self, token, ask.timeout)
        namespace = tenancy.tenant if tenancy else DEFAULT_NAMESPACE
        cache = self.cache
        key = cache.key(model, parsed, namespace) if cache is not None else None  # streams: off
        policy = CachePolicy.parse(cache_control)
        if cache is not None and key is not None and policy.lookup:
            assert parsed is not None
            hit, headers, _ = await cache.look_up(
                key, policy, model, parsed, namespace, semantic=False
            )
            if hit is not None:
                if self.unqueued is not None and tenancy is not None:
                    await self.unqueued(tenancy)
                options = parsed.stream_options
                usage = options is not None and bool(options.include_usage)
                for chunk in chunks_from_completion(hit.body, usage):
                    stream.put(Reply(200, ReplyKind.CHUNK, headers, chunk))
                stream.put(Reply(200, ReplyKind.END, headers, b""))
                return stream
        await self._publish(ask, stream, token)
        return stream

    # ------------------------------------------------------------ typed API

    async def chat(
        self, request: ChatCompletionRequest | dict[str, Any], *, timeout: float | None = None
    ) -> ChatCompletion:
        chat = _as_request(request, stream=False)
        reply = await self.request(chat.model, encoder.encode(chat), timeout=timeout, parsed=chat)
        reply.raise_for_error()
        return completion_decoder.decode(reply.body)

    async def embeddings(
        self, request: EmbeddingRequest | dict[str, Any], *, timeout: float | None = None
    ) -> EmbeddingList:
        """Embeddings for a model alias of ``mode: embeddings`` (floats unless asked)."""
        if isinstance(request, dict):
            try:
                request = msgspec.convert(request, EmbeddingRequest)
            except msgspec.ValidationError as exc:
                raise from_validation_error(exc) from None
        reply = await self.request(
            request.model, encoder.encode(request), timeout=timeout, mode="embeddings"
        )
        reply.raise_for_error()
        return embedding_list_decoder.decode(reply.body)

    async def completions(
        self, request: CompletionRequest | dict[str, Any], *, timeout: float | None = None
    ) -> TextCompletion:
        """A legacy text completion (``/v1/completions``) for a model some of whose
        deployments have that API; not streamed."""
        if isinstance(request, dict):
            try:
                request = msgspec.convert(request, CompletionRequest)
            except msgspec.ValidationError as exc:
                raise from_validation_error(exc) from None
        request = msgspec.structs.replace(request, stream=None)
        reply = await self.request(
            request.model,
            encoder.encode(request),
            timeout=timeout,
            parsed=request,
            mode=TEXT_COMPLETIONS,
        )
        reply.raise_for_error()
        return text_completion_decoder.decode(reply.body)

    async def chat_stream(
        self, request: ChatCompletionRequest | dict[str, Any], *, timeout: float | None = None
    ) -> AsyncIterator[ChatCompletionChunk]:
        chat = _as_request(request, stream=True)
        stream = await self.open_stream(
            chat.model, encoder.encode(chat), timeout=timeout, parsed=chat
        )
        try:
            async for reply in stream:
                yield chunk_decoder.decode(reply.body)
        finally:
            stream.close()


def _as_request(
    request: ChatCompletionRequest | dict[str, Any], *, stream: bool
) -> ChatCompletionRequest:
    if isinstance(request, dict):
        try:
            request = msgspec.convert(request, ChatCompletionRequest)
        except msgspec.ValidationError as exc:
            raise from_validation_error(exc) from None
    return msgspec.structs.replace(request, stream=stream or None)


def _waiting(pending: _Pending | None) -> bool:
    return isinstance(pending, asyncio.Future) and not pending.done()


class _Sent(NamedTuple):
    subject: str
    body: bytes
    headers: dict[str, str]
    seq: int  # where the request sits in the stream until a worker acks it
    timeout: float


class _PubAck(msgspec.Struct):
    seq: int


_pub_ack_decoder = msgspec.json.Decoder(_PubAck)


def _check_publish_ack(ack: Reply) -> int:
    """A JetStream publish ack is ``{"stream":..., "seq":...}``; anything else is a failure.
    Returns the sequence."""
    if ack.headers.get("Status") == "503":
        raise queue_unavailable("no stream listens on the request subject")
    if b'"error"' in ack.body:
        try:
            error = msgspec.json.decode(ack.body)["error"]
            reason, err_code = str(error["description"]), int(error.get("err_code", 0))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            reason, err_code = ack.body[:200].decode(errors="replace"), 0
        if err_code in _QUEUE_FULL_CODES or "maximum messages" in reason:
            raise no_capacity()
        raise queue_unavailable(f"JetStream refused the request: {reason}")
    try:
        return _pub_ack_decoder.decode(ack.body).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise queue_unavailable(f"unexpected publish acknowledgement {ack.body[:100]!r}") from None


# JetStream "maximum messages (per subject) exceeded" and "maximum bytes exceeded"
_QUEUE_FULL_CODES = frozenset({10077, 10078, 10047})


def _embedded_url(config: Config) -> str:
    return f"nats://{config.nats.host}:{config.nats.port}"
