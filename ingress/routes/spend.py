"""The admin API's spend logs (behind the admin key, as ingress/routes/admin.py):

GET /admin/requests[?tenant=&key=&model=&since=&cursor=&limit=&format=]
    one record per request, oldest first, a page at a time (``next_cursor``);
    ``since``: Unix seconds or an ISO 8601 time; ``format``: json (default), jsonl,
    csv (the page as a file, the next cursor in ``x-next-cursor``)
"""

from __future__ import annotations

import datetime

from starlette.requests import Request
from starlette.responses import Response

from broker.nats.subjects import Subjects
from broker.spend import records
from ingress.routes.admin import _json, authorize
from schemas.errors import InvalidRequest


def _since(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            400, "`since` must be Unix seconds or an ISO 8601 time.", param="since"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(400, f"`{name}` must be an integer from {low} to {high}.", param=name)
    return value


async def list_requests(request: Request) -> Response:
    found = authorize(request)
    query = request.query_params
    fmt = query.get("format", "json")
    if fmt not in ("json", "jsonl", "csv"):
        raise InvalidRequest(400, "`format` must be json, jsonl or csv.", param="format")
    page, cursor = await records.read(
        found.client.js,
        Subjects.of(found.config),
        tenant=query.get("tenant"),
        key_id=query.get("key"),
        model=query.get("model"),
        since=_since(query.get("since")),
        after=_int(query.get("cursor"), "cursor", 0, 0, 2**63),
        limit=_int(query.get("limit"), "limit", 100, 1, records.MAX_PAGE),
    )
    headers = {"x-next-cursor": str(cursor)} if cursor is not None else {}
    if fmt == "jsonl":
        return Response(records.as_jsonl(page), media_type="application/jsonl", headers=headers)
    if fmt == "csv":
        return Response(records.as_csv(page), media_type="text/csv", headers=headers)
    return _json({"object": "list", "data": page, "next_cursor": cursor})
