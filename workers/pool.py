"""One deployment's share of a model's queue: validate, call the provider, reply, ack.

The pool never acks before the reply is published. Both go out on the same connection,
in that order, so NATS delivers the reply before it processes the ack; a worker that dies
in between leaves the request un-acked and JetStream redelivers it after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.chat import ChatCompletionRequest, request_decoder
from schemas.envelope import (
    H_DEPLOYMENT,
    H_ERROR_SOURCE,
    H_KIND,
    H_STATUS,
    ReplyKind,
    RequestMeta,
)
from schemas.errors import BrokerError, deadline_exceeded, from_validation_error
from workers.providers.base import Provider

log = logging.getLogger(__name__)


class DeploymentPool:
    def __init__(self, nc: NATS, provider: Provider, ack_wait: float) -> None:
        self._nc = nc
        self.provider = provider
        self._progress_every = max(ack_wait / 3, 0.5)
        self._working: dict[int, tuple[Msg, float]] = {}  # id(msg) -> (msg, started)
        self._sweeper: asyncio.Task[None] | None = None
        name = provider.name
        self._ok = {H_KIND: ReplyKind.RESPONSE.value, H_STATUS: "200", H_DEPLOYMENT: name}
        self._chunk = {H_KIND: ReplyKind.CHUNK.value, H_STATUS: "200", H_DEPLOYMENT: name}
        self._end = {H_KIND: ReplyKind.END.value, H_STATUS: "200", H_DEPLOYMENT: name}

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._keep_alive())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        await self.provider.aclose()

    async def handle(self, msg: Msg) -> None:
        meta = RequestMeta.from_headers(msg.headers)
        if not meta.reply_to:
            log.warning("request %s has no Pb-Reply-To header; dropped", meta.request_id)
            await msg.term()
            return
        key = id(msg)
        self._working[key] = (msg, time.monotonic())
        try:
            await self._serve(msg, meta)
        finally:
            del self._working[key]
            await msg.ack()

    async def _serve(self, msg: Msg, meta: RequestMeta) -> None:
        reply_to = meta.reply_to
        assert reply_to is not None
        remaining = meta.remaining()
        if remaining is not None and remaining <= 0:
            await self._error(
                reply_to, deadline_exceeded(0, "while the request waited in the queue")
            )
            return
        try:
            request = request_decoder.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self._error(reply_to, from_validation_error(exc))
            return
        try:
            async with asyncio.timeout(remaining):
                if request.stream:
                    await self._stream(reply_to, request)
                else:
                    body = await self.provider.complete(request)
                    await self._nc.publish(reply_to, body, headers=self._ok)
        except BrokerError as exc:
            await self._error(reply_to, exc)
        except TimeoutError:
            await self._error(
                reply_to, deadline_exceeded(remaining or 0, "while the provider was answering")
            )
        except Exception as exc:
            log.exception("request %s failed in %s", meta.request_id, self.provider.name)
            await self._error(
                reply_to,
                BrokerError(
                    500,
                    f"internal error in worker: {type(exc).__name__}",
                    type="api_error",
                    code="internal_error",
                ),
            )

    async def _stream(self, reply_to: str, request: ChatCompletionRequest) -> None:
        async for chunk in self.provider.stream(request):
            await self._nc.publish(reply_to, chunk, headers=self._chunk)
        await self._nc.publish(reply_to, b"", headers=self._end)

    async def _error(self, reply_to: str, error: BrokerError) -> None:
        headers = {
            H_KIND: ReplyKind.ERROR.value,
            H_STATUS: str(error.status),
            H_DEPLOYMENT: self.provider.name,
        }
        if error.detail.type == "upstream_error":
            headers[H_ERROR_SOURCE] = "upstream"
        with contextlib.suppress(Exception):
            await self._nc.publish(reply_to, error.to_json(), headers=headers)

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
