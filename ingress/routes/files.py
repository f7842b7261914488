"""OpenAI's Files API over ``FileStore``: HTTP mapping only.

Uploads are parsed by Starlette's multipart parser (python-multipart), which spools the
file part to disk past 1 MiB; the spooled file is then copied into the Object Store in
chunks. Downloads stream from the Object Store chunk by chunk. Files belong to the
tenant of the key that uploaded them: another tenant's are not found (404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ingress.state import services, tenant_of
from schemas.batch import FileList, encoder
from schemas.errors import InvalidRequest, RequestTooLarge

PURPOSES = ("batch",)


def json_response(value: object) -> Response:
    return Response(encoder.encode(value), media_type="application/json")


async def upload_file(request: Request) -> Response:
    found = services(request)
    tenant = tenant_of(request)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            415,
            f"Content-Type must be multipart/form-data, got `{content_type or '(none)'}`.",
            code="unsupported_media_type",
        )
    limit = found.config.batch.max_file_bytes
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
            raise InvalidRequest(400, "A `file` part is required.", param="file", code="missing")
        if (upload.size or 0) > limit:
            raise RequestTooLarge(
                413,
                f"The file exceeds the {limit} byte limit.",
                param="file",
                code="file_too_large",
            )
        await upload.seek(0)
        stored = await found.batches.files.put(
            upload.file, upload.filename or "upload.jsonl", purpose, tenant=tenant
        )
    return json_response(stored)


async def list_files(request: Request) -> Response:
    tenant = tenant_of(request)
    purpose = request.query_params.get("purpose")
    files = services(request).batches.files
    return json_response(FileList(data=await files.list(purpose, tenant)))


async def retrieve_file(request: Request) -> Response:
    files = services(request).batches.files
    file_id = request.path_params["file_id"]
    await files.check_owner(file_id, tenant_of(request))
    return json_response(await files.info(file_id))


async def delete_file(request: Request) -> Response:
    files = services(request).batches.files
    file_id = request.path_params["file_id"]
    await files.check_owner(file_id, tenant_of(request))
    await files.delete(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    files = services(request).batches.files
    file_id = request.path_params["file_id"]
    await files.check_owner(file_id, tenant_of(request))
    await files.info(file_id)  # a 404 before the response starts

    async def body() -> AsyncIterator[bytes]:
        async for chunk in files.chunks(file_id):
            yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")
