"""Publishing an error reply: the OpenAI error body plus the reply headers of the contract."""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NATS

from broker import connection
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
from schemas.errors import BrokerError


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
    if error.detail.type == "upstream_error":
        headers[H_ERROR_SOURCE] = "upstream"
    if meta.failed:
        headers[H_FAILOVER_FROM] = ",".join(meta.failed)
    with contextlib.suppress(Exception):
        await connection.settled(nc)  # callers re-subscribed after a reconnect
        await nc.publish(meta.reply_to, error.to_json(), headers=headers)
