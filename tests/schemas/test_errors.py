"""The error hierarchy: every constructor raises the class its docstring tree names, and an
error rebuilt from its reply body (what a caller over NATS receives) is the same class."""

from __future__ import annotations

import re

import pytest

from schemas import errors
from schemas.errors import (
    AuthenticationError,
    BrokerError,
    CircuitOpen,
    ContextLengthExceeded,
    DeadlineExceeded,
    DeploymentFault,
    InternalError,
    InvalidRequest,
    NotFound,
    NoWorker,
    RateLimited,
    RequestTooLarge,
    Unavailable,
    UpstreamError,
)
from workers.providers.errors import classify

CONSTRUCTED: list[tuple[BrokerError, type[BrokerError]]] = [
    (errors.invalid_request("bad", param="x"), InvalidRequest),
    (errors.model_not_found("m"), NotFound),
    (errors.wrong_endpoint("m", "embeddings"), InvalidRequest),
    (errors.no_worker("m"), NoWorker),
    (errors.no_capacity(), Unavailable),
    (errors.request_too_large(10), RequestTooLarge),
    (errors.response_too_large(10), UpstreamError),
    (errors.poison_request(3), InternalError),
    (errors.unknown_field("top_k", "anthropic"), InvalidRequest),
    (errors.internal_error(ValueError()), InternalError),
    (errors.queue_unavailable("down"), Unavailable),
    (errors.deadline_exceeded(1.0, "queued"), DeadlineExceeded),
    (errors.circuit_open("d", 5.0), CircuitOpen),
    (errors.upstream_error(500, "d", "boom"), UpstreamError),
    (classify("d", 401, b'{"error": {"message": "no", "type": "x"}}'), DeploymentFault),
    (classify("d", 402, b"pay up"), DeploymentFault),
    (
        classify(
            "d", 400, b'{"error": {"message": "x", "type": "x", "code": "context_length_exceeded"}}'
        ),
        ContextLengthExceeded,
    ),
    (BrokerError.from_json(502, b"not json"), UpstreamError),
]


@pytest.mark.parametrize(("error", "kind"), CONSTRUCTED, ids=lambda v: getattr(v, "__name__", ""))
def test_each_error_is_its_class_and_survives_the_wire(
    error: BrokerError, kind: type[BrokerError]
) -> None:
    assert type(error) is kind
    again = BrokerError.from_json(error.status, error.to_json(), retryable=error.retryable)
    assert type(again) is kind, again
    assert (again.status, again.detail) == (error.status, error.detail)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequest),
        (401, AuthenticationError),
        (404, NotFound),
        (409, InvalidRequest),
        (413, RequestTooLarge),
        (429, RateLimited),
        (503, Unavailable),
        (504, DeadlineExceeded),
        (500, InternalError),
    ],
)
def test_a_bare_status_gets_its_category(status: int, kind: type[BrokerError]) -> None:
    body = BrokerError(status, "x", code="something_new").to_json()
    assert type(BrokerError.from_json(status, body)) is kind


def test_the_tree_is_the_one_the_docstring_draws() -> None:
    assert issubclass(NotFound, InvalidRequest) and issubclass(RequestTooLarge, InvalidRequest)
    assert issubclass(CircuitOpen, Unavailable) and issubclass(NoWorker, Unavailable)
    assert issubclass(DeploymentFault, UpstreamError)
    assert issubclass(ContextLengthExceeded, UpstreamError)
    doc = errors.__doc__ or ""
    drawn = {
        cls.__name__
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, BrokerError)
    }
    assert {name for name in drawn if not re.search(rf"\b{name}\b", doc)} == set()
