"""What every HTTP adapter shares: the pooled aiohttp session, SSE framing, transport errors.

One ``aiohttp.ClientSession`` per deployment: a keep-alive connection pool sized to the
deployment's concurrency, so no request pays for connection set-up. aiohttp rather
than httpx because the upstream call is the worker's hot path and, measured here with
the same server, aiohttp spends 0.2-0.3 ms of CPU per request against httpx's 1.2 ms
(and httpx's pool loses most of its rate past a few dozen concurrent requests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from schemas.config import DeploymentConfig
from schemas.errors import BrokerError, upstream_error

MAX_LINE_BYTES = 4 * 1024 * 1024  # one SSE line holds one chunk, tool arguments included


def new_session(deployment: DeploymentConfig) -> aiohttp.ClientSession:
    """The deployment's pooled session; create it inside the running event loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=deployment.max_concurrency,
            keepalive_timeout=60,
            enable_cleanup_closed=True,
        ),
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=deployment.connect_timeout_s,
            sock_read=deployment.read_timeout_s,
        ),
        read_bufsize=MAX_LINE_BYTES,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=64 * 1024,
    )


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream, one per event.

    Event names, comments and blank separators are skipped: every provider spoken here
    repeats the event type inside the JSON payload.
    """
    async for line in response.content:
        if line.startswith(b"data:"):
            yield line[5:].strip()


def transport_error(deployment: str, url: str, exc: BaseException) -> BrokerError:
    """A failure below HTTP (timeout, refused connection, broken stream) as a category."""
    if isinstance(exc, TimeoutError):
        return upstream_error(
            504,
            deployment,
            f"timed out talking to {url} ({type(exc).__name__})",
            code="upstream_timeout",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_error(
            502,
            deployment,
            f"cannot connect to {url}: {exc.os_error.strerror or exc}",
            code="upstream_unreachable",
        )
    return upstream_error(
        502,
        deployment,
        f"transport error with {url}: {type(exc).__name__}: {exc}",
        code="upstream_transport_error",
    )
