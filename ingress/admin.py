"""The admin API: breakers and deployments, behind the admin key.

    GET  /admin/breakers                          every breaker, state and counters
    POST /admin/breakers/{deployment}/open        force open (until closed by an operator)
    POST /admin/breakers/{deployment}/close       close / reset
    GET  /admin/deployments                       in-flight, queued, latency, error rate...
    GET  /admin/overview                          the dashboard's data in one call
    GET  /admin/dashboard                         the live dashboard page (asks for the key)

Authentication: ``Authorization: Bearer <key>``, the key being the value of the
environment variable named by ``admin.api_key_env``. Unset: the admin API is off (403).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker import admin, metrics
from broker.client import BrokerClient
from schemas.config import Config
from schemas.errors import BrokerError

_encoder = msgspec.json.Encoder()
DASHBOARD_HTML = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()


def _json(value: Any) -> Response:
    return Response(_encoder.encode(value), media_type="application/json")


def admin_routes(config: Config, broker: Callable[[], BrokerClient]) -> list[Route]:
    key = os.environ.get(config.admin.api_key_env)

    def authorize(request: Request) -> BrokerClient:
        if not key:
            raise BrokerError(
                403,
                f"The admin API is disabled: set {config.admin.api_key_env} for the ingress.",
                type="permission_error",
                code="admin_disabled",
            )
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise BrokerError(
                401,
                "Missing or wrong admin key (Authorization: Bearer <key>).",
                type="authentication_error",
                code="invalid_admin_key",
            )
        return broker()

    async def list_breakers(request: Request) -> Response:
        client = authorize(request)
        return _json({"object": "list", "data": await admin.breakers_view(client.js, config)})

    async def change_breaker(request: Request) -> Response:
        client = authorize(request)
        action = request.path_params["action"]
        if action not in ("open", "close", "reset"):
            raise BrokerError(404, f"Unknown breaker action `{action}`.", code="not_found")
        record = await admin.set_breaker(
            client.js,
            config,
            request.path_params["deployment"],
            "open" if action == "open" else "close",
        )
        return _json(record)

    async def list_deployments(request: Request) -> Response:
        client = authorize(request)
        views = await admin.deployments_view(client.js, config, client.subjects)
        return _json({"object": "list", "data": views})

    async def overview(request: Request) -> Response:
        """Everything the dashboard shows in one call."""
        client = authorize(request)
        views = await admin.deployments_view(client.js, config, client.subjects)
        cost = round(sum(view.cost_usd for view in views), 6)
        return _json({"deployments": views, "ingress": metrics.ingress_summary(), "cost": cost})

    async def dashboard(request: Request) -> Response:
        """The page itself holds no data: it asks for the key and polls /admin/overview."""
        return Response(DASHBOARD_HTML, media_type="text/html")

    return [
        Route("/admin/breakers", list_breakers, methods=["GET"]),
        Route("/admin/breakers/{deployment:path}/{action}", change_breaker, methods=["POST"]),
        Route("/admin/deployments", list_deployments, methods=["GET"]),
        Route("/admin/overview", overview, methods=["GET"]),
        Route("/admin/dashboard", dashboard, methods=["GET"]),
    ]
