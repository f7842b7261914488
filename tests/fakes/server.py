"""Running a fake upstream: uvicorn in a background thread, plus recording and scripting."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request

from broker.nats.embedded import free_port


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body (None if it was not JSON)


@dataclass
class Scripted:
    """An answer a test chose in advance: a JSON body, or the events of a stream."""

    status: int = 200
    body: Any = None
    events: list[Any] | None = None  # streamed as SSE, one data line each
    headers: dict[str, str] = field(default_factory=dict)


class FakeUpstream:
    """State shared by a fake's handlers and the test that drives it."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self._script: list[Scripted] = []

    def script(self, *answers: Scripted) -> None:
        """The next requests get these answers, in order; after them, the default."""
        self._script.extend(answers)

    def next_scripted(self) -> Scripted | None:
        return self._script.pop(0) if self._script else None

    def reset(self) -> None:
        self.requests.clear()
        self._script.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def record(self, request: Request, body: Any) -> Recorded:
        recorded = Recorded(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        self.requests.append(recorded)
        return recorded


class ThreadedServer:
    """A Starlette app served on 127.0.0.1 from a daemon thread until ``stop``."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
