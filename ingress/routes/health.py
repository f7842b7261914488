"""Probes and documents: ``/healthz`` (the process runs), ``/readyz`` (it reaches NATS and
the request stream), ``/metrics`` (Prometheus) and ``/openapi.json``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.observability import metrics
from ingress.openapi import openapi_json
from ingress.state import services

_OPENAPI = openapi_json()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    broker = services(request).client
    if not broker.nc.is_connected:
        return JSONResponse({"status": "unavailable", "reason": "not connected to NATS"}, 503)
    try:
        await broker.js.stream_info(broker.subjects.stream)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"stream: {exc}"}, 503)
    return JSONResponse({"status": "ready", "stream": broker.subjects.stream})


async def metrics_endpoint(request: Request) -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, headers={"Content-Type": content_type})


async def openapi_endpoint(request: Request) -> Response:
    return Response(_OPENAPI, media_type="application/json")
