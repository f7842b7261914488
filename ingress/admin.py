"""The admin API: breakers and deployments, behind the admin key.

    GET  /admin/breakers                          every breaker, state and counters
    POST /admin/breakers/{deployment}/open        force open (until closed by an operator)
    POST /admin/breakers/{deployment}/close       close / reset
    GET  /admin/deployments                       in-flight, queued, latency, error rate...
    GET  /admin/overview                          the dashboard's data in one call
    GET  /admin/dashboard                         the live dashboard page (asks for the key)
    POST /admin/keys                              create a key (the secret is shown once)
    GET  /admin/keys[?tenant=]                    keys without secrets
    POST /admin/keys/{id}/rotate                  a new secret for the same key
    POST /admin/keys/{id}/revoke                  revoke (also DELETE /admin/keys/{id})
    GET  /admin/tenants                           tenants with their current usage
    PUT  /admin/tenants/{name}                    set a tenant's limits, budgets, quota
    GET  /admin/usage[?tenant=&days=7]            tokens and cost per day, tenant, key,
                                                  model and deployment

Authentication: ``Authorization: Bearer <key>``, the key being the value of the
environment variable named by ``admin.api_key_env``. Unset: the admin API is off (403).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.client import BrokerClient
from broker.observability import metrics
from broker.routing import views as routing_views
from broker.tenancy import views as tenancy_views
from broker.tenancy.admission import Admission
from ingress.http_io import read_body
from schemas.config import Config
from schemas.depth import check_depth
from schemas.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    from_validation_error,
)
from schemas.tenancy import KeySpec, TenantSpec

_encoder = msgspec.json.Encoder()
DASHBOARD_HTML = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


T = TypeVar("T")
ADMIN_MAX_BODY_BYTES = 1024 * 1024  # a key or tenant spec


def _decode(body: bytes, kind: type[T]) -> T:
    check_depth(body)
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_validation_error(exc) from None


def admin_routes(
    config: Config, broker: Callable[[], BrokerClient], admission: Callable[[], Admission]
) -> list[Route]:
    key = os.environ.get(config.admin.api_key_env)

    def authorize(request: Request) -> BrokerClient:
        if not key:
            raise PermissionDenied(
                403,
                f"The admin API is disabled: set {config.admin.api_key_env} for the ingress.",
                type="permission_error",
                code="admin_disabled",
            )
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise AuthenticationError(
                401,
                "Missing or wrong admin key (Authorization: Bearer <key>).",
                type="authentication_error",
                code="invalid_admin_key",
            )
        return broker()

    async def list_breakers(request: Request) -> Response:
        client = authorize(request)
        views = await routing_views.breakers_view(client.js, config)
        return _json({"object": "list", "data": views})

    async def change_breaker(request: Request) -> Response:
        client = authorize(request)
        action = request.path_params["action"]
        if action not in ("open", "close", "reset"):
            raise NotFound(404, f"Unknown breaker action `{action}`.", code="not_found")
        record = await routing_views.set_breaker(
            client.js,
            config,
            request.path_params["deployment"],
            "open" if action == "open" else "close",
        )
        return _json(record)

    async def list_deployments(request: Request) -> Response:
        client = authorize(request)
        views = await routing_views.deployments_view(client.js, config, client.subjects)
        return _json({"object": "list", "data": views})

    async def overview(request: Request) -> Response:
        """Everything the dashboard shows in one call."""
        client = authorize(request)
        views = await routing_views.deployments_view(client.js, config, client.subjects)
        cost = round(sum(view.cost_usd for view in views), 6)
        return _json({"deployments": views, "ingress": metrics.ingress_summary(), "cost": cost})

    async def dashboard(request: Request) -> Response:
        """The page itself holds no data: it asks for the key and polls /admin/overview."""
        return Response(DASHBOARD_HTML, media_type="text/html")

    async def create_key(request: Request) -> Response:
        authorize(request)
        spec = _decode(await read_body(request, ADMIN_MAX_BODY_BYTES, "an admin spec"), KeySpec)
        admission().check_spec(spec)
        issued = await admission().keys.create_key(spec)
        return _json(tenancy_views.issued_view(issued), 201)

    async def list_keys(request: Request) -> Response:
        authorize(request)
        records = admission().keys.keys(request.query_params.get("tenant"))
        return _json({"object": "list", "data": [tenancy_views.key_view(r) for r in records]})

    async def change_key(request: Request) -> Response:
        authorize(request)
        key_id = request.path_params["key_id"]
        action = request.path_params.get("action", "revoke")
        keys = admission().keys
        if action == "rotate":
            issued = await keys.rotate_key(key_id)
            if issued is not None:
                return _json(tenancy_views.issued_view(issued))
        elif action == "revoke":
            record = await keys.revoke_key(key_id)
            if record is not None:
                return _json(tenancy_views.key_view(record))
        else:
            raise NotFound(404, f"Unknown key action `{action}`.", code="not_found")
        raise NotFound(404, f"No active key `{key_id}`.", code="key_not_found")

    async def list_tenants(request: Request) -> Response:
        authorize(request)
        views = await tenancy_views.tenants_view(admission())
        return _json({"object": "list", "data": views})

    async def set_tenant(request: Request) -> Response:
        authorize(request)
        spec = _decode(await read_body(request, ADMIN_MAX_BODY_BYTES, "an admin spec"), TenantSpec)
        record = await admission().keys.set_tenant(request.path_params["name"], spec)
        return _json(record)

    async def usage(request: Request) -> Response:
        client = authorize(request)
        query = request.query_params
        try:
            days = int(query.get("days", "1"))
        except ValueError:
            raise InvalidRequest(400, "`days` must be an integer.", param="days") from None
        if not 1 <= days <= 366:
            raise InvalidRequest(400, "`days` must be between 1 and 366.", param="days")
        report = await tenancy_views.usage_report(client.js, config, days, query.get("tenant"))
        return _json(report)

    return [
        Route("/admin/keys", create_key, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", change_key, methods=["DELETE"]),
        Route("/admin/keys/{key_id}/{action}", change_key, methods=["POST"]),
        Route("/admin/tenants", list_tenants, methods=["GET"]),
        Route("/admin/tenants/{name}", set_tenant, methods=["PUT"]),
        Route("/admin/usage", usage, methods=["GET"]),
        Route("/admin/breakers", list_breakers, methods=["GET"]),
        Route("/admin/breakers/{deployment:path}/{action}", change_breaker, methods=["POST"]),
        Route("/admin/deployments", list_deployments, methods=["GET"]),
        Route("/admin/overview", overview, methods=["GET"]),
        Route("/admin/dashboard", dashboard, methods=["GET"]),
    ]
