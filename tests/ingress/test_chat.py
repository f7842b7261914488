"""The chat route's bookkeeping runs once its answer has been sent, not before."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, StreamingResponse

from ingress.routes.chat import after_sending

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def test_a_whole_answer_is_sent_before_the_bookkeeping() -> None:
    happened: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        happened.append(message["type"])

    async def earlier_background() -> None:
        happened.append("earlier background")

    earlier = BackgroundTask(earlier_background)
    response = JSONResponse({"ok": True}, background=earlier)
    after_sending(response, lambda: happened.append("bookkeeping"))
    assert happened == []  # not yet: it waits for the answer to go
    await response(SCOPE, _receive, send)
    assert happened == [
        "http.response.start",
        "http.response.body",
        "bookkeeping",
        "earlier background",
    ]
    assert response.background is earlier  # no cycle left for the collector to find


async def test_a_stream_is_counted_at_once_even_if_its_client_leaves() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"

    counted: list[str] = []
    after_sending(StreamingResponse(events()), lambda: counted.append("bookkeeping"))
    assert counted == ["bookkeeping"]
