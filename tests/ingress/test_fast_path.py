"""The model routes' POSTs reach their handlers directly, answering as Starlette would."""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from ingress.address_limits import AddressLimits
from ingress.app import HOT, ROUTES
from ingress.error_handlers import HANDLERS
from ingress.fast_path import FastPathApp
from schemas.config import IngressConfig
from schemas.errors import InvalidRequest

seen: list[str] = []


async def hot(request: Request) -> Response:
    seen.append(f"hot {request.method} {request.url.path}")
    body = await request.body()
    if body == b"bad":
        raise InvalidRequest(400, "bad body", param="messages", code="invalid_value")
    if body == b"bug":
        raise RuntimeError("a bug")
    return JSONResponse({"echo": body.decode()})


async def routed(request: Request) -> Response:
    seen.append(f"routed {request.method} {request.url.path}")
    return JSONResponse({"routed": True})


def _app(limits: AddressLimits | None = None) -> FastPathApp:
    app = FastPathApp(
        hot={"/v1/chat/completions": hot},
        handlers=HANDLERS,
        limits=limits,
        routes=[
            Route("/v1/chat/completions", hot, methods=["POST"]),
            Route("/v1/models", routed, methods=["GET"]),
        ],
    )
    app.router.redirect_slashes = False  # as create_app has it
    return app


async def _call(app: FastPathApp, method: str, path: str, body: bytes = b"") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, content=body)


async def test_a_hot_post_is_answered_by_its_handler() -> None:
    seen.clear()
    response = await _call(_app(), "POST", "/v1/chat/completions", b"hi")
    assert response.status_code == 200
    assert response.json() == {"echo": "hi"}
    assert seen == ["hot POST /v1/chat/completions"]


async def test_other_methods_and_paths_go_through_starlette() -> None:
    app = _app()
    wrong_method = await _call(app, "GET", "/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"
    assert (await _call(app, "GET", "/v1/models")).json() == {"routed": True}
    missing = await _call(app, "POST", "/v1/chat/completions/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_a_handler_s_exception_is_rendered_by_the_most_specific_handler() -> None:
    app = _app()
    refused = await _call(app, "POST", "/v1/chat/completions", b"bad")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages"
    assert refused.headers["x-should-retry"] == "false"
    bug = await _call(app, "POST", "/v1/chat/completions", b"bug")
    assert bug.status_code == 500
    assert bug.headers["content-type"] == "application/json"
    assert bug.json()["error"]["type"] == "api_error"


class _Refusing(AddressLimits):
    """Refuses every ``/v1/`` request, counting what it was asked."""

    def __init__(self) -> None:
        super().__init__(IngressConfig(global_rpm=1))
        self.asked: list[str] = []

    async def refusal(self, scope: Scope) -> Response | None:
        self.asked.append(scope["path"])
        return JSONResponse({"error": {"code": "global_rate_limit_exceeded"}}, status_code=429)


async def test_the_address_limits_come_first_on_both_paths() -> None:
    seen.clear()
    limits = _Refusing()
    app = _app(limits)
    assert (await _call(app, "POST", "/v1/chat/completions", b"hi")).status_code == 429
    assert (await _call(app, "GET", "/v1/models")).status_code == 429
    assert limits.asked == ["/v1/chat/completions", "/v1/models"]
    assert seen == []  # neither handler ran


def test_every_hot_path_is_a_post_route_of_the_same_handler() -> None:
    """The dispatch table cannot drift from the route table (and the OpenAPI document
    built from it)."""
    posts = {
        route.path: route.endpoint
        for route in ROUTES
        if isinstance(route, Route) and "POST" in (route.methods or set())
    }
    for path, endpoint in HOT.items():
        assert posts[path] is endpoint, path
