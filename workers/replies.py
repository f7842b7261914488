"""Publishing an error reply: the OpenAI error body plus the reply headers of the contract."""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NATS

from broker.nats import connection
from schemas.envelope import (
    H_CUSTOM_ID,
    H_DEPLOYMENT,
    H_ERROR_SOURCE,
    H_FAILOVER_FROM,
    H_KIND,
    H_REQUEST_ID,
    H_RETRY_AFTER,
    H_SHOULD_RETRY,
    H_STATUS,
    ReplyKind,
    RequestMeta,
)
from schemas.errors import BrokerError, UpstreamError, response_too_large

# Room left in each part for the subject-independent part headers and framing.
_PART_HEADROOM = 1024


async def publish_reply(
    nc: NATS, meta: RequestMeta, body: bytes, headers: dict[str, str], max_reply_bytes: int
) -> None:
    """Publish one reply (a response or a stream chunk) however large it is.

    A reply that fits the server's ``max_payload`` is one message. A larger one goes as
    ``Pb-Kind: part`` messages followed by the reply itself carrying the last piece, to a
    caller that said it reassembles them (``Pb-Accept-Parts: 1``); core NATS keeps one
    publisher's messages to one subscriber in order. Any other caller (and any reply over
    ``max_reply_bytes``) gets :func:`response_too_large` raised here, to answer instead:
    our own publish never costs the connection, and the caller is not left waiting.
    """
    assert meta.reply_to is not None
    await connection.settled(nc)  # callers re-subscribed after a reconnect
    limit = nc.max_payload
    if connection.message_size(body, headers) <= limit:
        await nc.publish(meta.reply_to, body, headers=headers)
        return
    if not meta.accepts_parts or len(body) > max_reply_bytes:
        raise response_too_large(max_reply_bytes if meta.accepts_parts else limit)
    part_headers = {H_KIND: ReplyKind.PART.value, H_REQUEST_ID: meta.request_id}
    piece = limit - connection.message_size(b"", headers | part_headers) - _PART_HEADROOM
    last = len(body) - piece
    start = 0
    while start < last:
        await nc.publish(meta.reply_to, body[start : start + piece], headers=part_headers)
        start += piece
    await nc.publish(meta.reply_to, body[start:], headers=headers)


async def reply_error(nc: NATS, meta: RequestMeta, error: BrokerError, deployment: str) -> None:
    """Best effort: a reply that cannot be sent has no one left to receive it."""
    if not meta.reply_to:
        return
    headers = {
        H_KIND: ReplyKind.ERROR.value,
        H_STATUS: str(error.status),
        H_DEPLOYMENT: deployment,
        H_SHOULD_RETRY: "true" if error.retryable else "false",
        H_REQUEST_ID: meta.request_id,
    }
    if meta.custom_id is not None:
        headers[H_CUSTOM_ID] = meta.custom_id
    if error.retry_after is not None:
        headers[H_RETRY_AFTER] = f"{error.retry_after:.3f}"
    if isinstance(error, UpstreamError):
        headers[H_ERROR_SOURCE] = "upstream"
    if meta.failed:
        headers[H_FAILOVER_FROM] = ",".join(meta.failed)
    with contextlib.suppress(Exception):  # an error body is small: one message, no parts
        await publish_reply(nc, meta, error.to_json(), headers, max_reply_bytes=0)
