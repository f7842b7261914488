"""One place that opens NATS connections, with reconnect behaviour suited to a broker."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)


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
