"""The admin API's experiments (behind the admin key, as ingress/routes/admin.py):

GET  /admin/experiments                       every experiment: shares, canary state
GET  /admin/experiments/{name}[?hours=24]     one, with each variant's report
POST /admin/experiments/{name}/rollback       a canary to 0% now (body: {"reason"})
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.experiments.traffic import Experiments, report_since
from ingress.http_io import read_body
from ingress.routes.admin import ADMIN_MAX_BODY_BYTES, _decode, _json, authorize
from schemas.config import ExperimentConfig
from schemas.errors import InvalidRequest, NotFound
from schemas.experiments import ExperimentView


class Rollback(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = "rolled back by an operator"


def _found(request: Request) -> tuple[Experiments, ExperimentConfig]:
    experiments = authorize(request).experiments
    name = request.path_params["name"]
    experiment = (
        next((e for e in experiments.config.experiments if e.name == name), None)
        if experiments is not None
        else None
    )
    if experiments is None or experiment is None:
        raise NotFound(404, f"No experiment `{name}`.", code="experiment_not_found", param="name")
    return experiments, experiment


async def list_experiments(request: Request) -> Response:
    experiments = authorize(request).experiments
    if experiments is None:
        return _json({"object": "list", "data": []})
    views = [
        ExperimentView(
            name=e.name,
            model=e.model,
            sticky=e.sticky,
            shares=experiments.shares(e.name),
            canary=experiments.canary_state(e.name),
        )
        for e in experiments.config.experiments
    ]
    return _json({"object": "list", "data": views})


async def show_experiment(request: Request) -> Response:
    experiments, experiment = _found(request)
    raw = request.query_params.get("hours")
    try:
        hours = float(raw) if raw is not None else None
    except ValueError:
        hours = -1.0
    if hours is not None and not 0 < hours <= 24 * 366:
        raise InvalidRequest(400, "`hours` must be a number from 0 to 8784.", param="hours")
    return _json(await experiments.view(experiment, report_since(hours)))


async def roll_back(request: Request) -> Response:
    experiments, experiment = _found(request)
    if experiment.canary is None:
        raise InvalidRequest(
            400, f"Experiment `{experiment.name}` is not a canary.", code="not_a_canary"
        )
    body = await read_body(request, ADMIN_MAX_BODY_BYTES)
    reason = _decode(body, Rollback).reason if body.strip() else Rollback().reason
    return _json(await experiments.roll_back(experiment, reason))
