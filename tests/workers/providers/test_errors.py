"""The provider-answer rules (workers/providers/errors.py): each category, its retry
verdict and the class a caller catches, in the order the rules take precedence."""

from __future__ import annotations

import json

import pytest

from schemas.errors import ContextLengthExceeded, DeploymentFault, UpstreamError
from workers.providers.errors import classify


def openai_body(
    message: str, code: str | None = None, type_: str = "invalid_request_error"
) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


CASES = [
    (401, openai_body("bad key"), "upstream_auth_failed", False, DeploymentFault),
    (403, b"forbidden", "upstream_auth_failed", False, DeploymentFault),
    (402, b"pay", "upstream_quota_exceeded", False, DeploymentFault),
    (
        429,
        openai_body("no", "insufficient_quota"),
        "upstream_quota_exceeded",
        False,
        DeploymentFault,
    ),
    (
        400,
        openai_body("Your credit balance is too low"),
        "upstream_quota_exceeded",
        False,
        DeploymentFault,
    ),
    (429, openai_body("slow down"), "upstream_rate_limited", True, UpstreamError),
    (
        400,
        openai_body("too long", "context_length_exceeded"),
        "context_length_exceeded",
        False,
        ContextLengthExceeded,
    ),
    (400, openai_body("x", "content_filter"), "content_filtered", False, UpstreamError),
    (409, b"conflict", "upstream_conflict", True, UpstreamError),
    (504, b"", "upstream_timeout", True, UpstreamError),
    (503, b"overloaded", "upstream_server_error", True, UpstreamError),
    (422, openai_body("bad field"), "upstream_bad_request", False, UpstreamError),
]


@pytest.mark.parametrize(("status", "body", "code", "retryable", "kind"), CASES)
def test_each_answer_gets_its_category(
    status: int, body: bytes, code: str, retryable: bool, kind: type[UpstreamError]
) -> None:
    error = classify("dep-a", status, body)
    assert (error.detail.code, error.retryable, type(error)) == (code, retryable, kind)
    assert error.status == status and "dep-a" in error.message


def test_a_rate_limit_says_when_to_retry() -> None:
    error = classify("dep-a", 429, openai_body("slow down"), {"Retry-After": "7"})
    assert error.retry_after == 7 and "retry in 7s." in error.message
    assert "retry after a short wait." in classify("dep-a", 429, b"").message
    assert classify("dep-a", 400, b"x", {"Retry-After": "7"}).retry_after is None
