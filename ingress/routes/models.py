"""``GET /v1/models`` and ``/v1/models/{id}``: the models the caller's key may use and
some live worker serves."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingress.state import api_key, services
from schemas.chat import Model, ModelList, encoder
from schemas.config import ModelConfig
from schemas.errors import model_not_found


async def list_models(request: Request) -> Response:
    found = services(request)
    allowed = found.admission.allowed_models(api_key(request))
    live = found.client.directory.is_served

    def servable(model: ModelConfig) -> bool:  # by a worker of its own or a fallback's
        return live(model.model_name) or any(live(f) for f in model.fallbacks)

    models = ModelList(
        data=[
            Model(id=m.model_name, created=0, owned_by=m.owned_by)
            for m in found.config.model_list
            if (allowed is None or m.model_name in allowed) and servable(m)
        ]
        + [  # split aliases (experiments): served while any variant is
            Model(id=e.model, created=0, owned_by="promptbus")
            for e in found.config.experiments
            if (allowed is None or e.model in allowed) and any(live(v) for v in e.variants)
        ]
    )
    return Response(encoder.encode(models), media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    found = services(request)
    name = request.path_params["model"]
    allowed = found.admission.allowed_models(api_key(request))  # 401 first
    model = found.config.model(name)
    owner = model.owned_by if model is not None else "promptbus"
    if (model is None and found.config.experiment(name) is None) or (
        allowed is not None and name not in allowed
    ):
        raise model_not_found(name)
    return Response(
        encoder.encode(Model(id=name, created=0, owned_by=owner)),
        media_type="application/json",
    )
