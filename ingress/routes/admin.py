"""The admin API: breakers and deployments, behind the admin key.

    GET  /admin/breakers                          every breaker, state and counters
    POST /admin/breakers/{deployment}/open        force open (until closed by an operator)
    POST /admin/breakers/{deployment}/close       close / reset
    GET  /admin/deployments                       in-flight, queued, latency, error rate...
    GET  /admin/overview                          the dashboard's data in one call
    GET  /admin/dashboard                         the live dashboard page (asks for the key)
    GET  /admin/static/{uplot.js,uplot.css}       its charting library (no key needed)
    POST /admin/keys                              create a key (the secret is shown once)
    GET  /admin/keys[?tenant=]                    keys without secrets
    POST /admin/keys/{id}/rotate                  a new secret for the same key
    POST /admin/keys/{id}/revoke                  revoke (also DELETE /admin/keys/{id})
    GET  /admin/tenants                           tenants with their current usage
    PUT  /admin/tenants/{name}                    set a tenant's limits, budgets, quota
    GET  /admin/usage[?tenant=&days=7&by=]        tokens and cost per day, tenant, key,
                                                  model and deployment (by=team|user: per
                                                  team, per end user)
    GET  /admin/forecast[?tenant=]                month-to-date spend per tenant and key,
                                                  projected to the month's end, budgets
    GET  /admin/teams[?tenant=]                   teams with their limits
    PUT  /admin/teams/{tenant}/{name}             set a team's limits, budgets, quota, models

Alerts and the dashboard's time series: ingress/routes/alerts.py.

Authentication: ``Authorization: Bearer <key>``, the key being the value of the
environment variable named by ``admin.api_key_env``. Unset: the admin API is off (403).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.observability import metrics
from broker.routing import views as routing_views
from broker.tenancy import views as tenancy_views
from ingress.http_io import read_body
from ingress.state import Services, services
from schemas.depth import check_depth
from schemas.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    from_validation_error,
)
from schemas.tenancy import KeySpec, TeamSpec, TenantSpec, check_team_name

_encoder = msgspec.json.Encoder()
STATIC = Path(__file__).parents[1] / "static"
DASHBOARD_HTML = (STATIC / "dashboard.html").read_bytes()
# The dashboard's vendored charting library (ingress/static/vendor/uplot/README.md)
VENDORED = {
    "uplot.js": ((STATIC / "vendor/uplot/uPlot.iife.min.js").read_bytes(), "text/javascript"),
    "uplot.css": ((STATIC / "vendor/uplot/uPlot.min.css").read_bytes(), "text/css"),
}


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


def authorize(request: Request) -> Services:
    """The services, for a request carrying the admin key (403 while the admin API is off,
    401 for a wrong key)."""
    found = services(request)
    key, config = found.admin_key, found.config
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
    return found


async def list_breakers(request: Request) -> Response:
    found = authorize(request)
    views = await routing_views.breakers_view(found.client.js, found.config)
    return _json({"object": "list", "data": views})


async def change_breaker(request: Request) -> Response:
    found = authorize(request)
    action = request.path_params["action"]
    if action not in ("open", "close", "reset"):
        raise NotFound(404, f"Unknown breaker action `{action}`.", code="not_found")
    record = await routing_views.set_breaker(
        found.client.js,
        found.config,
        request.path_params["deployment"],
        "open" if action == "open" else "close",
    )
    return _json(record)


async def _deployments(found: Services) -> list[routing_views.DeploymentView]:
    client = found.client
    return await routing_views.deployments_view(client.js, found.config, client.subjects)


async def list_deployments(request: Request) -> Response:
    found = authorize(request)
    views = await _deployments(found)
    return _json({"object": "list", "data": views})


async def overview(request: Request) -> Response:
    """Everything the dashboard shows in one call."""
    found = authorize(request)
    views = await _deployments(found)
    cost = round(sum(view.cost_usd for view in views), 6)
    return _json({"deployments": views, "ingress": metrics.ingress_summary(), "cost": cost})


async def dashboard(request: Request) -> Response:
    """The page itself holds no data: it asks for the key and polls /admin/overview."""
    return Response(DASHBOARD_HTML, media_type="text/html")


async def vendored(request: Request) -> Response:
    """The dashboard's charting library: public code, served without the key."""
    found = VENDORED.get(request.path_params["name"])
    if found is None:
        raise NotFound(404, "No such file.", code="not_found")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"cache-control": "max-age=86400"})


async def create_key(request: Request) -> Response:
    found = authorize(request)
    spec = _decode(await read_body(request, ADMIN_MAX_BODY_BYTES, "an admin spec"), KeySpec)
    found.admission.check_spec(spec)
    issued = await found.admission.keys.create_key(spec)
    return _json(tenancy_views.issued_view(issued), 201)


async def list_keys(request: Request) -> Response:
    found = authorize(request)
    records = found.admission.keys.keys(request.query_params.get("tenant"))
    return _json({"object": "list", "data": [tenancy_views.key_view(r) for r in records]})


async def change_key(request: Request) -> Response:
    found = authorize(request)
    key_id = request.path_params["key_id"]
    action = request.path_params.get("action", "revoke")
    keys = found.admission.keys
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
    found = authorize(request)
    views = await tenancy_views.tenants_view(found.admission)
    return _json({"object": "list", "data": views})


async def set_tenant(request: Request) -> Response:
    found = authorize(request)
    spec = _decode(await read_body(request, ADMIN_MAX_BODY_BYTES, "an admin spec"), TenantSpec)
    record = await found.admission.keys.set_tenant(request.path_params["name"], spec)
    return _json(record)


async def usage(request: Request) -> Response:
    found = authorize(request)
    query = request.query_params
    try:
        days = int(query.get("days", "1"))
    except ValueError:
        raise InvalidRequest(400, "`days` must be an integer.", param="days") from None
    if not 1 <= days <= 366:
        raise InvalidRequest(400, "`days` must be between 1 and 366.", param="days")
    tenant = query.get("tenant")
    by = query.get("by", "key")
    if by not in tenancy_views.USAGE_BY:
        raise InvalidRequest(400, "`by` must be key, team or user.", param="by")
    report = await tenancy_views.usage_report(
        found.client.js, found.config, days, tenant, by, found.admission.keys
    )
    return _json(report)


async def forecast(request: Request) -> Response:
    found = authorize(request)
    rows = await tenancy_views.forecast_view(
        found.client.js, found.config, found.admission.keys, request.query_params.get("tenant")
    )
    return _json({"object": "list", "data": rows})


async def list_teams(request: Request) -> Response:
    found = authorize(request)
    teams = found.admission.keys.teams(request.query_params.get("tenant"))
    return _json({"object": "list", "data": [tenancy_views.team_view(t) for t in teams]})


async def set_team(request: Request) -> Response:
    found = authorize(request)
    tenant, name = request.path_params["tenant"], request.path_params["name"]
    check_team_name(name)
    spec = _decode(await read_body(request, ADMIN_MAX_BODY_BYTES, "an admin spec"), TeamSpec)
    found.admission.check_models(spec.models)
    return _json(await found.admission.keys.set_team(tenant, name, spec))
