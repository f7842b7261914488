"""One place that opens NATS connections, with reconnect behaviour suited to a broker."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)

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


async def connect(url: str | list[str], name: str) -> NATS:
    """Connect with unlimited reconnects: a broker outlives nats-server restarts."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own close is not news
            log.warning("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        _reconnected_at[nc] = time.monotonic()
        log.info("nats %s: reconnected", name)

    nc = NATS()
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
    )
    return nc
