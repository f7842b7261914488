"""A webhook receiver on 127.0.0.1 (aiohttp): records every POST, and can answer the
first few with an error to exercise retries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.received: list[tuple[str, Any]] = []  # (path, body) of the accepted posts
        self.attempts = 0
        self._failures, self._status = failures, status
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._arrived = asyncio.Event()

    async def _post(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self._failures > 0:
            self._failures -= 1
            return web.Response(status=self._status, text="not now")
        self.received.append((request.path, json.loads(body)))
        self._arrived.set()
        return web.Response(text="ok")

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, Any]]:
        """The posts received, once there are ``count`` of them."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received
