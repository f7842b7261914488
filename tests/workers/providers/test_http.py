"""The upstream HTTP session's timeouts (workers/providers/http.py), against a real
server on 127.0.0.1 that stops sending halfway through an answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from schemas.chat import ChatCompletionRequest, UserMessage
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError
from workers.providers.http import answer_timeout
from workers.providers.openai_compat import OpenAICompatProvider


def _deployment(base_url: str, read_timeout_s: float, timeout_s: float) -> DeploymentConfig:
    return DeploymentConfig(
        provider="openai",
        name="stalling",
        base_url=base_url,
        read_timeout_s=read_timeout_s,
        timeout_s=timeout_s,
    )


def test_no_timer_between_bytes_when_the_attempt_ends_first() -> None:
    redundant = answer_timeout(_deployment("http://x", read_timeout_s=600, timeout_s=600))
    assert redundant.sock_read is None and redundant.connect == 10.0
    kept = answer_timeout(_deployment("http://x", read_timeout_s=0.5, timeout_s=60))
    assert kept.sock_read == 0.5


@pytest.fixture
async def stalling() -> AsyncIterator[str]:
    """Sends the headers and half the body, then nothing until the test ends."""
    ended = asyncio.Event()

    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"id": "half')
        await asyncio.wait_for(ended.wait(), 30)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", half)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    ended.set()
    await runner.cleanup()


async def test_a_stalled_answer_is_cut_by_read_timeout_s_when_it_is_the_shorter(
    stalling: str,
) -> None:
    provider = OpenAICompatProvider(_deployment(stalling, read_timeout_s=0.3, timeout_s=60), None)
    request = ChatCompletionRequest(model="m", messages=[UserMessage(content="hi")])
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(BrokerError) as err:
            await provider.complete(request)
    finally:
        await provider.aclose()
    assert err.value.status == 504 and err.value.detail.code == "upstream_timeout"
    assert loop.time() - started < 5  # not the stall's end, nor timeout_s
