"""The OpenAI-compatible HTTP API: the route table, the lifespan and the error handlers.

Starlette because it is the thinnest stack with routing, streaming responses and a
lifespan hook (encode's style: plain functions, no dependency injection); uvicorn with
httptools and uvloop under it. The request path does no work the NATS client does not
already do: check Content-Type, read the body within the limit, validate it once with
msgspec, then hand the raw bytes to ``BrokerClient``.

The model routes' POSTs are dispatched by path before Starlette's layers
(``ingress/fast_path.py``). This module holds only paths and the handlers they map
to (tensorzero's rule for its route table); each handler lives in ``ingress/routes/``
and reads what the lifespan opened through ``request.state.services``
(``ingress/state.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route

from broker.client import BrokerClient
from broker.nats.credentials import Role, login_for
from ingress.address_limits import AddressLimits
from ingress.error_handlers import HANDLERS
from ingress.fast_path import FastPathApp
from ingress.routes import admin, alerts, batches, experiments, files, health, spend
from ingress.routes.chat import chat_completions
from ingress.routes.completions import completions
from ingress.routes.embeddings import embeddings
from ingress.routes.messages import create_message
from ingress.routes.models import list_models, retrieve_model
from ingress.routes.responses import (
    create_response,
    delete_response,
    list_input_items,
    retrieve_response,
)
from ingress.state import Services
from schemas.config import Config

# The model routes: their POSTs skip Starlette's layers (ingress/fast_path.py, HOT).
MODEL_ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/messages", create_message, methods=["POST"]),
]

ROUTES = [
    *MODEL_ROUTES,
    Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/files", files.upload_file, methods=["POST"]),
    Route("/v1/files", files.list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", files.retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", files.delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", files.file_content, methods=["GET"]),
    Route("/v1/batches", batches.create_batch, methods=["POST"]),
    Route("/v1/batches", batches.list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", batches.retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"]),
    Route("/admin/keys", admin.create_key, methods=["POST"]),
    Route("/admin/keys", admin.list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}", admin.change_key, methods=["DELETE"]),
    Route("/admin/keys/{key_id}/{action}", admin.change_key, methods=["POST"]),
    Route("/admin/tenants", admin.list_tenants, methods=["GET"]),
    Route("/admin/tenants/{name}", admin.set_tenant, methods=["PUT"]),
    Route("/admin/usage", admin.usage, methods=["GET"]),
    Route("/admin/teams", admin.list_teams, methods=["GET"]),
    Route("/admin/forecast", admin.forecast, methods=["GET"]),
    Route("/admin/requests", spend.list_requests, methods=["GET"]),
    Route("/admin/teams/{tenant}/{name}", admin.set_team, methods=["PUT"]),
    Route("/admin/experiments", experiments.list_experiments, methods=["GET"]),
    Route("/admin/experiments/{name}", experiments.show_experiment, methods=["GET"]),
    Route("/admin/experiments/{name}/rollback", experiments.roll_back, methods=["POST"]),
    Route("/admin/alerts", alerts.list_alerts, methods=["GET"]),
    Route("/admin/alerts/history", alerts.alert_history, methods=["GET"]),
    Route("/admin/alerts/rules", alerts.list_rules, methods=["GET"]),
    Route("/admin/alerts/rules/{name}", alerts.set_rule, methods=["PUT"]),
    Route("/admin/alerts/rules/{name}", alerts.delete_rule, methods=["DELETE"]),
    Route("/admin/alerts/{alert_id}/ack", alerts.acknowledge, methods=["POST"]),
    Route("/admin/series", alerts.series, methods=["GET"]),
    Route("/admin/breakers", admin.list_breakers, methods=["GET"]),
    Route("/admin/breakers/{deployment:path}/{action}", admin.change_breaker, methods=["POST"]),
    Route("/admin/deployments", admin.list_deployments, methods=["GET"]),
    Route("/admin/overview", admin.overview, methods=["GET"]),
    Route("/admin/dashboard", admin.dashboard, methods=["GET"]),
    Route("/admin/static/{name}", admin.vendored, methods=["GET"]),
    Route("/openapi.json", health.openapi_endpoint, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics_endpoint, methods=["GET"]),
]


HOT = {route.path: route.endpoint for route in MODEL_ROUTES}


def create_app(
    config: Config, client: BrokerClient | None = None, nats_url: str | None = None
) -> FastPathApp:
    """The ASGI app; it connects its own ``BrokerClient`` at start-up unless given one."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        broker = client or await BrokerClient.connect(
            config, nats_url, name="promptbus-ingress", login=login_for(config, Role.INGRESS)
        )
        try:
            services = await Services.open(config, broker)
            try:
                yield {"services": services}
            finally:
                await services.close()
        finally:
            if client is None:
                await broker.close()

    app = FastPathApp(
        hot=HOT,
        handlers=HANDLERS,
        limits=AddressLimits.configured(config.ingress),
        routes=ROUTES,
        lifespan=lifespan,
    )
    # No 307 to the path without its trailing slash: an API client does not follow
    # redirects of a POST or DELETE, and `/v1/files/%2F` is simply not found.
    app.router.redirect_slashes = False
    return app
