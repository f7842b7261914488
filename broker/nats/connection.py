"""One place that opens NATS connections, with reconnect behaviour suited to a broker."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import (
    DEFAULT_SUB_PENDING_BYTES_LIMIT,
    DEFAULT_SUB_PENDING_MSGS_LIMIT,
    Subscription,
)
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.protocol.command import hpub_cmd

from broker.nats.credentials import Login
from broker.nats.headers import decode_headers, encode_headers
from broker.nats.parser import WireParser
from broker.nats.subscription import quicken
from schemas.errors import AuthenticationError

log = logging.getLogger(__name__)

# What a message's headers cost on the wire beyond their keys and values:
# ``NATS/1.0\r\n`` + ``\r\n`` at the end, and ``: `` + ``\r\n`` per header.
_HEADER_FRAME = 12
_PER_HEADER = 4
# Within this of the limit by the cheap count, the headers' UTF-8 bytes are counted.
_NON_ASCII_SLACK = 4096


def message_size(payload: bytes, headers: dict[str, str] | None, *, exact: bool = False) -> int:
    """The bytes nats-server counts against ``max_payload``: headers and body together.
    Header values are counted in characters (exact for ASCII) unless ``exact``."""
    if not headers:
        return len(payload)
    keys = sum(map(len, headers))
    if exact:
        values = sum(len(v.encode()) for v in headers.values())
    else:
        values = sum(map(len, headers.values()))
    return len(payload) + _HEADER_FRAME + keys + values + _PER_HEADER * len(headers)


class GuardedNATS(NATS):
    """nats-py's client with two guards against losing the connection to our own traffic.

    - nats-py checks only the body against the server's ``max_payload``; headers push a
      message over it, nats-server answers ``-ERR 'Maximum Payload Violation'`` and closes
      the connection, and nats-py then closes the client for good. Here the whole message
      is checked first and refused with :class:`MaxPayloadError`, nothing sent.
    - A server error that still arrives (another client library's bug, a server with a
      lower limit after a failover) makes the client reconnect instead of closing.

    And three of its hot paths, cheaper with the same results: the protocol parser
    (broker/nats/parser.py), the reading of header blocks (broker/nats/headers.py) and
    ``next_msg`` on a message already queued (broker/nats/subscription.py).
    """

    _parse_header_lines = staticmethod(decode_headers)

    def __init__(self) -> None:
        super().__init__()
        self._ps = WireParser(self)

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
        future: asyncio.Future[Any] | None = None,
        max_msgs: int = 0,
        pending_msgs_limit: int = DEFAULT_SUB_PENDING_MSGS_LIMIT,
        pending_bytes_limit: int = DEFAULT_SUB_PENDING_BYTES_LIMIT,
    ) -> Subscription:
        sub = await super().subscribe(
            subject, queue, cb, future, max_msgs, pending_msgs_limit, pending_bytes_limit
        )
        return quicken(sub)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        limit = self._max_payload
        if message_size(payload, headers) > limit - _NON_ASCII_SLACK and (
            message_size(payload, headers, exact=True) > limit
        ):
            raise MaxPayloadError
        await super().publish(subject, payload, reply, headers)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, str] | None,
    ) -> None:
        """nats-py's, with the header block built by :func:`encode_headers`."""
        if not headers or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, encode_headers(headers), payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    async def _process_err(self, err_msg: str) -> None:
        if "maximum payload" in err_msg.lower():
            log.warning("nats-server refused a message (%s): reconnecting", err_msg.strip("'"))
            await self._process_op_err(NatsError(f"nats: {err_msg.strip(chr(39))}"))
            return
        await super()._process_err(err_msg)


# After a reconnect, how long core-NATS replies wait so that the callers (who reconnect
# too, 0.5 s apart at most) have re-subscribed their inboxes: a reply sent earlier
# would reach nobody and the caller would wait out its deadline.
RESUBSCRIBE_GRACE_S = 1.5
_reconnected_at: weakref.WeakKeyDictionary[NATS, float] = weakref.WeakKeyDictionary()


async def settled(nc: NATS) -> None:
    """Return at once on a steady connection; otherwise wait until it is back and has
    been for ``RESUBSCRIBE_GRACE_S``. Workers call it before publishing a reply."""
    if nc.is_connected and nc not in _reconnected_at:
        return
    if not nc.is_connected:
        while not nc.is_connected and not nc.is_closed:  # noqa: ASYNC110 (nats-py: no event)
            await asyncio.sleep(0.05)
        await asyncio.sleep(RESUBSCRIBE_GRACE_S)
        return
    since = _reconnected_at.get(nc, 0.0)
    left = min(RESUBSCRIBE_GRACE_S, RESUBSCRIBE_GRACE_S - (time.monotonic() - since))
    if left > 0:
        await asyncio.sleep(left)
    else:
        _reconnected_at.pop(nc, None)


def server_list(url: str | list[str]) -> list[str]:
    """``nats://a:4222,nats://b:4222`` or a list: every node of a cluster, so a client
    fails over to the next one when its server goes away."""
    urls = url if isinstance(url, list) else url.split(",")
    return [u.strip() for u in urls if u.strip()]


async def _check_login(servers: list[str], name: str, login: Login) -> None:
    """One attempt with a tenant's key before connecting for good: nats-py retries a
    refused login for ever (we reconnect without limit), a wrong key must fail at once."""
    probe = NATS()

    async def quiet(exc: Exception) -> None:
        pass

    try:
        await probe.connect(
            servers=servers,
            name=name,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
            error_cb=quiet,
            **login.nats_options(),
        )
        await probe.flush(timeout=5)
    except Exception as exc:
        text = str(exc).lower()
        if any(w in text for w in ("authoriz", "authentic", "no servers", "closed")):
            raise AuthenticationError(
                401,
                "NATS refused the API key: it is not a valid promptbus key, or it was "
                "revoked, or no ingress (which checks keys for NATS) is running.",
                type="invalid_request_error",
                code="invalid_api_key",
            ) from None
        raise
    finally:
        if not probe.is_closed:
            await probe.close()


async def connect(url: str | list[str], name: str, login: Login | None = None) -> NATS:
    """Connect with unlimited reconnects: a broker outlives nats-server restarts.
    ``login``: who to log in as (``credentials.login_for``); none: anonymously.

    Publishes made while disconnected are buffered and sent on reconnect; callers that
    report failure (BrokerClient) do not publish while disconnected.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own close is not news
            log.warning("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        _reconnected_at[nc] = time.monotonic()
        log.info("nats %s: reconnected", name)

    login = login or Login()
    if "token" in login.options:
        await _check_login(server_list(url), name, login)
    nc = GuardedNATS()
    await nc.connect(
        servers=server_list(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds, float is fine
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
        **login.nats_options(),
    )
    return nc


async def close(nc: NATS) -> None:
    """Drain a connection, or close it when it cannot drain: nats-py refuses to drain one
    that is reconnecting (``ConnectionReconnectingError``), which a process stopping
    while its server is away must not turn into a crash. Closed already: nothing to do."""
    if nc.is_closed or nc.is_draining:
        return
    if nc.is_connecting or nc.is_reconnecting:
        await nc.close()
        return
    await nc.drain()
