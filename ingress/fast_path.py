"""The model routes' requests straight to their handlers, past Starlette's layers.

A request through Starlette passes ServerErrorMiddleware, ExceptionMiddleware, the
router (which tries each route's pattern in turn), the route and ``request_response``:
each a coroutine and most a ``send`` wrapper: 3-10% of the ingress's CPU per request,
measured side by side. For a ``POST`` to a model route's exact path none of them does
anything the handler does not: the path is known, the handlers turn their own errors
into answers. So this app looks such a request up in one dict and awaits its handler,
rendering an exception the handler let through with the same handlers Starlette
would use; every other request goes through Starlette as before.

The per-address limits (``ingress/address_limits.py``) are asked first, for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ingress.address_limits import AddressLimits

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class FastPathApp(Starlette):
    """Starlette, with ``hot`` (path -> handler of its ``POST``) dispatched directly."""

    def __init__(
        self,
        *,
        hot: Mapping[str, Endpoint],
        handlers: Mapping[type[Exception], Handler],
        limits: AddressLimits | None = None,
        **starlette: Any,
    ) -> None:
        super().__init__(exception_handlers=dict(handlers), **starlette)
        self._hot = dict(hot)
        self._handlers = dict(handlers)
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        endpoint = None
        if scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._hot.get(scope["path"])
        if endpoint is None and self._limits is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await self._limits.refusal(scope) if self._limits else None
            if response is None and endpoint is not None:
                response = await endpoint(request)
        except Exception as exc:
            response = await self._render(request, exc)
        if response is None:  # within the limits, and not a hot route
            await super().__call__(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _render(self, request: Request, exc: Exception) -> Response:
        """The answer Starlette's exception handling would give (the most specific
        handler by the exception's class hierarchy)."""
        for cls in type(exc).__mro__:
            handler = self._handlers.get(cls)
            if handler is not None:
                return await handler(request, exc)
        raise exc
