"""The admin API's alerts and charts (behind the admin key, as ingress/routes/admin.py):

GET    /admin/alerts[?status=firing|pending]       alerts pending or firing now
GET    /admin/alerts/history[?since=&limit=200]    their events, oldest first
POST   /admin/alerts/{id}/ack                      acknowledge (body: {"by": "..."})
GET    /admin/alerts/rules                         the rules in force, and where from
PUT    /admin/alerts/rules/{name}                  add or change a rule (body: a rule)
DELETE /admin/alerts/rules/{name}                  remove a rule added at run time
GET    /admin/series[?minutes=60&step=60&by=model|deployment&model=&deployment=&tenant=]
                                                   the dashboard's time series
"""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.alerts.rules import sourced
from broker.telemetry.charts import chart
from ingress.http_io import read_body
from ingress.routes.admin import ADMIN_MAX_BODY_BYTES, _decode, _json, authorize
from ingress.state import Services
from ingress.watch import Watch
from schemas.alerts import AckRequest, AlertRule
from schemas.errors import InvalidRequest


def _watch(found: Services) -> Watch:
    assert found.watch is not None  # opened with the services
    return found.watch


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise InvalidRequest(
            400, f"`{name}` must be a number from {low:g} to {high:g}.", param=name
        )
    return value


async def list_alerts(request: Request) -> Response:
    found = authorize(request)
    status = request.query_params.get("status")
    if status not in (None, "firing", "pending"):
        raise InvalidRequest(400, "`status` must be firing or pending.", param="status")
    alerts = [a for a, _ in (await _watch(found).alerts.active()).values()]
    alerts = [a for a in alerts if status is None or a.status == status]
    alerts.sort(key=lambda a: (a.status != "firing", -a.started_at))
    data = [msgspec.to_builtins(a) | {"summary": a.summary} for a in alerts]
    return _json({"object": "list", "data": data})


async def alert_history(request: Request) -> Response:
    found = authorize(request)
    since = request.query_params.get("since")
    limit = int(_number(request, "limit", 200, 1, 10_000))
    start = _number(request, "since", 0, 0, 1e11) if since is not None else None
    events = await _watch(found).alerts.history(start, limit)
    return _json({"object": "list", "data": events})


async def acknowledge(request: Request) -> Response:
    found = authorize(request)
    body = await read_body(request, ADMIN_MAX_BODY_BYTES, "an acknowledgement")
    ack = _decode(body, AckRequest) if body.strip() else AckRequest()
    alert = await _watch(found).alerts.ack(request.path_params["alert_id"], ack.by)
    return _json(msgspec.to_builtins(alert) | {"summary": alert.summary})


async def list_rules(request: Request) -> Response:
    found = authorize(request)
    stored = await _watch(found).alerts.rules()
    data = [msgspec.to_builtins(r) | {"source": s} for r, s in sourced(found.config.alerts, stored)]
    return _json({"object": "list", "data": data})


async def set_rule(request: Request) -> Response:
    found = authorize(request)
    body = await read_body(request, ADMIN_MAX_BODY_BYTES, "an alert rule")
    raw = _decode(body, dict[str, object])
    raw["name"] = request.path_params["name"]
    rule = _decode(msgspec.json.encode(raw), AlertRule)
    await _watch(found).alerts.set_rule(rule)
    return _json(msgspec.to_builtins(rule) | {"source": "runtime"})


async def delete_rule(request: Request) -> Response:
    found = authorize(request)
    await _watch(found).alerts.delete_rule(request.path_params["name"])
    return _json({"name": request.path_params["name"], "deleted": True})


async def series(request: Request) -> Response:
    found = authorize(request)
    watched = _watch(found).series
    if watched is None:
        raise InvalidRequest(
            409, "Telemetry is off (telemetry.enabled: false).", code="telemetry_disabled"
        )
    by = request.query_params.get("by", "model")
    if by not in ("model", "deployment"):
        raise InvalidRequest(400, "`by` must be model or deployment.", param="by")
    labels = {
        name: request.query_params[name]
        for name in ("model", "deployment", "tenant")
        if request.query_params.get(name)
    }
    drawn = chart(
        watched,
        time.time(),
        minutes=_number(request, "minutes", 60, 1, 60),
        step_s=int(_number(request, "step", 60, 10, 600)),
        by=by,
        labels=labels,
    )
    return _json(drawn)
