"""OpenAI's Batches API over ``BatchStore``: HTTP mapping only. A batch runs as its
creator's key and belongs to that key's tenant: another tenant's are not found (404)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingress.http_io import page_limit, read_body, require_json
from ingress.routes.files import json_response
from ingress.state import api_key, services, tenant_of
from schemas.batch import create_decoder
from schemas.depth import decode_checked

CREATE_MAX_BYTES = 1024 * 1024  # a batch's create body names a file; it is never large


async def create_batch(request: Request) -> Response:
    found = services(request)
    owner = found.admission.owner(api_key(request))
    require_json(request)
    body = await read_body(request, CREATE_MAX_BYTES, "a batch's create body names a file")
    create = decode_checked(create_decoder, body)
    return json_response(await found.batches.create(create, owner))


async def list_batches(request: Request) -> Response:
    tenant = tenant_of(request)
    after = request.query_params.get("after")
    return json_response(await services(request).batches.list(after, page_limit(request), tenant))


async def retrieve_batch(request: Request) -> Response:
    tenant = tenant_of(request)
    return json_response(
        await services(request).batches.get(request.path_params["batch_id"], tenant)
    )


async def cancel_batch(request: Request) -> Response:
    store = services(request).batches
    batch_id = request.path_params["batch_id"]
    await store.get(batch_id, tenant_of(request))  # another tenant's: 404
    return json_response(await store.cancel(batch_id))
