"""Closing a connection whatever state it is in (broker/nats/connection.py ``close``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.nats.connection import close, connect
from broker.nats.credentials import Role
from broker.nats.embedded import EmbeddedNats
from tests import bus


async def test_a_connection_whose_server_is_gone_closes_instead_of_raising(
    tmp_path: Path,
) -> None:
    """nats-py refuses to drain a reconnecting connection; a process stopping while its
    server is away (a cluster node killed under it) must still stop cleanly. A live
    connection drains, and closing twice is harmless."""
    server = EmbeddedNats(
        tmp_path / "nats", credentials_dir=bus.CREDENTIALS.directory, brokers=bus.BROKERS
    ).start()
    try:
        live = await connect(server.url, "live", bus.CREDENTIALS.login(Role.ADMIN))
        await close(live)
        assert live.is_closed
        await close(live)  # again: nothing to do
        orphan = await connect(server.url, "orphan", bus.CREDENTIALS.login(Role.ADMIN))
        server.kill()
        for _ in range(100):
            if orphan.is_reconnecting or orphan.is_connecting:
                break
            await asyncio.sleep(0.05)
        assert orphan.is_reconnecting or orphan.is_connecting
        await close(orphan)
        assert orphan.is_closed
    finally:
        server.stop()
