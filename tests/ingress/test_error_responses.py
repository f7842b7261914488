"""Every failure a client can cause, or an upstream can, is an OpenAI-style error."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Stack

CHAT = "/v1/chat/completions"


def body(**overrides: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], **overrides}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    return error  # type: ignore[no-any-return]


def test_malformed_json_is_400(http: httpx.Client) -> None:
    error = error_of(
        http.post(CHAT, content=b'{"model": ', headers={"content-type": "application/json"}), 400
    )
    assert error["code"] == "invalid_json"


def test_wrong_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(CHAT, content=b"model=mock-gpt", headers={"content-type": "text/plain"})
    assert error_of(response, 415)["code"] == "unsupported_media_type"


def test_missing_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(CHAT, content=b"{}", headers={"content-type": ""})
    assert error_of(response, 415)["code"] == "unsupported_media_type"


def test_body_over_10mb_is_413(http: httpx.Client) -> None:
    huge = (
        b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "'
        + b"a" * (10 * 1024 * 1024)
        + b'"}]}'
    )
    assert (
        error_of(http.post(CHAT, content=huge, headers={"content-type": "application/json"}), 413)[
            "code"
        ]
        == "request_too_large"
    )


def test_chunked_body_over_limit_is_413(http: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "'
        for _ in range(11):
            yield b"a" * (1024 * 1024)

    response = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert error_of(response, 413)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("sent", "param"),
    [
        ({"model": "mock-gpt"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_missing_required_fields_name_the_param(
    http: httpx.Client, sent: dict[str, Any], param: str
) -> None:
    error = error_of(http.post(CHAT, json=sent), 400)
    assert error["param"] == param
    assert f"`{param}`" in error["message"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),  # the missing field itself
        ({"model": ""}, "model"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_schema_violations_name_the_param(
    http: httpx.Client, overrides: dict[str, Any], param: str
) -> None:
    error = error_of(http.post(CHAT, json=body(**overrides)), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_missing_model_is_400(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]}), 400)
    assert "model" in error["message"]


def test_sdk_sees_bad_request(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "x"}], temperature=9
        )
    assert err.value.param == "temperature"


def test_unknown_model_is_404(http: httpx.Client, openai_client: openai.OpenAI) -> None:
    error = error_of(http.post(CHAT, json=body(model="gpt-nonexistent")), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "x"}]
        )


def test_model_without_worker_is_503(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT, json=body(model="orphan")), 503)
    assert error["code"] == "no_worker_available"
    assert "orphan" in error["message"] and "worker" in error["message"]
    stream = error_of(http.post(CHAT, json=body(model="orphan", stream=True)), 503)
    assert stream["code"] == "no_worker_available"


def test_deadline_passed_is_504(http: httpx.Client) -> None:
    started = time.monotonic()
    response = http.post(CHAT, json=body(model="mock-slow"), headers={"x-promptbus-timeout": "0.3"})
    elapsed = time.monotonic() - started
    assert error_of(response, 504)["code"] == "deadline_exceeded"
    assert elapsed < 1.0  # the slow provider takes 1 s: we did not wait for it


def test_sdk_timeout_header_sets_the_deadline(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.ingress}/v1", api_key="x", max_retries=0, timeout=5)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="mock-slow",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-stainless-timeout": "0.2"},
        )
    assert err.value.status_code == 504


def test_bad_timeout_header_is_400(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT, json=body(), headers={"x-promptbus-timeout": "soon"}), 400)
    assert error["param"] == "x-promptbus-timeout"


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_upstream_error_status_is_relayed(http: httpx.Client, status: int) -> None:
    response = http.post(
        CHAT, json=body(model="upstream-gpt", metadata={"mock_status": str(status)})
    )
    error = error_of(response, status)
    assert error["type"] == "upstream_error"
    assert "fake-openai" in error["message"] and f"HTTP {status}" in error["message"]
    assert "mock upstream simulated" in error["message"]  # the upstream's own words
    assert response.headers["x-promptbus-error-source"] == "upstream"


def test_upstream_429_is_a_rate_limit_error_for_the_sdk(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        openai_client.chat.completions.create(
            model="upstream-gpt",
            messages=[{"role": "user", "content": "x"}],
            metadata={"mock_status": "429"},
        )
    assert err.value.code == "upstream_rate_limited"
    assert "rate_limit_exceeded" in err.value.message  # the upstream's own code, kept


def test_upstream_error_before_stream_starts_keeps_its_status(http: httpx.Client) -> None:
    response = http.post(
        CHAT, json=body(model="upstream-gpt", stream=True, metadata={"mock_status": "429"})
    )
    assert error_of(response, 429)["type"] == "upstream_error"


def test_unreachable_upstream_is_502_naming_it(http: httpx.Client) -> None:
    error = error_of(http.post(CHAT, json=body(model="dead-upstream")), 502)
    assert error["code"] == "upstream_unreachable"
    assert "dead-upstream/0" in error["message"] and "cannot connect" in error["message"]


def test_unknown_route_and_method_are_json_errors(http: httpx.Client) -> None:
    assert error_of(http.get("/v1/nothing-here"), 404)["code"] == "not_found"
    wrong_method = http.get(CHAT)
    assert error_of(wrong_method, 405)["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"
    slash = http.delete("/v1/files/%2F")  # no redirect to another path
    assert slash.status_code == 404


def test_service_survives_the_abuse(http: httpx.Client) -> None:
    """After all of the above the ingress still answers normally."""
    response = http.post(CHAT, json=body())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "mock reply to: hi"
