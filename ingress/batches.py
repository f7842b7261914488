"""OpenAI's Files and Batches API over ``BatchStore`` and ``FileStore``: HTTP mapping only.

Uploads are parsed by Starlette's multipart parser (python-multipart), which spools the
file part to disk past 1 MiB; the spooled file is then copied into the Object Store in
chunks. Downloads stream from the Object Store chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from broker.batches.store import BatchStore
from ingress.http_io import read_body, require_json
from schemas.batch import FileList, create_decoder, encoder
from schemas.config import Config
from schemas.depth import decode_checked
from schemas.errors import InvalidRequest, RequestTooLarge

PURPOSES = ("batch",)


def _json(value: object) -> Response:
    return Response(encoder.encode(value), media_type="application/json")


CREATE_MAX_BYTES = 1024 * 1024  # a batch's create body names a file; it is never large


def batch_routes(
    config: Config,
    stores: Callable[[], BatchStore],
    authorize: Callable[[Request], tuple[str, str] | None],
) -> list[Route]:
    """``authorize`` raises (401) for a request whose API key is refused, and returns the
    key's (id, tenant) when keys are required. Files and batches then belong to the
    tenant: another tenant's are not found (404)."""

    def tenant_of(request: Request) -> str | None:
        owner = authorize(request)
        return owner[1] if owner else None

    async def upload_file(request: Request) -> Response:
        tenant = tenant_of(request)
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise InvalidRequest(
                415,
                f"Content-Type must be multipart/form-data, got `{content_type or '(none)'}`.",
                code="unsupported_media_type",
            )
        async with request.form(max_files=1, max_fields=16) as form:
            purpose = form.get("purpose")
            upload = form.get("file")
            if not isinstance(purpose, str) or purpose not in PURPOSES:
                raise InvalidRequest(
                    400,
                    f"purpose must be one of {', '.join(PURPOSES)}, got `{purpose}`.",
                    param="purpose",
                    code="invalid_value",
                )
            if not isinstance(upload, UploadFile):
                raise InvalidRequest(
                    400, "A `file` part is required.", param="file", code="missing"
                )
            size = upload.size or 0
            if size > config.batch.max_file_bytes:
                raise RequestTooLarge(
                    413,
                    f"The file exceeds the {config.batch.max_file_bytes} byte limit.",
                    param="file",
                    code="file_too_large",
                )
            await upload.seek(0)
            stored = await stores().files.put(
                upload.file, upload.filename or "upload.jsonl", purpose, tenant=tenant
            )
        return _json(stored)

    async def list_files(request: Request) -> Response:
        tenant = tenant_of(request)
        purpose = request.query_params.get("purpose")
        return _json(FileList(data=await stores().files.list(purpose, tenant)))

    async def retrieve_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await stores().files.check_owner(file_id, tenant_of(request))
        return _json(await stores().files.info(file_id))

    async def delete_file(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await stores().files.check_owner(file_id, tenant_of(request))
        await stores().files.delete(file_id)
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def file_content(request: Request) -> Response:
        files = stores().files
        file_id = request.path_params["file_id"]
        await files.check_owner(file_id, tenant_of(request))
        await files.info(file_id)  # a 404 before the response starts

        async def body() -> AsyncIterator[bytes]:
            async for chunk in files.chunks(file_id):
                yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        owner = authorize(request)
        require_json(request)
        body = await read_body(request, CREATE_MAX_BYTES, "a batch's create body names a file")
        create = decode_checked(create_decoder, body)
        return _json(await stores().create(create, owner))

    async def list_batches(request: Request) -> Response:
        tenant = tenant_of(request)
        limit_text = request.query_params.get("limit", "20")
        if not limit_text.isdigit():
            raise InvalidRequest(
                400, "limit must be an integer.", param="limit", code="invalid_value"
            )
        after = request.query_params.get("after")
        return _json(await stores().list(after, int(limit_text), tenant))

    async def retrieve_batch(request: Request) -> Response:
        tenant = tenant_of(request)
        return _json(await stores().get(request.path_params["batch_id"], tenant))

    async def cancel_batch(request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        await stores().get(batch_id, tenant_of(request))  # another tenant's: 404
        return _json(await stores().cancel(batch_id))

    return [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]
