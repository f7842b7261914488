"""Reading a request's headers the way the model routes do."""

from __future__ import annotations

from starlette.requests import Request

from ingress.http_io import header


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_a_header_reads_as_starlette_reads_it() -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"x-note", "caf\u00e9".encode("latin-1")),
    ]
    request = _request(raw)
    for name in ("content-type", "x-request-id", "x-note", "authorization"):
        assert header(request, name) == request.headers.get(name), name
    assert header(request, "x-request-id") == "first"  # the first of a repeated name
    assert header(request, "authorization") is None
    assert header(_request([]), "content-type") is None
