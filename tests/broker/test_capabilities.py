"""Capability routing (broker/routing/capabilities.py) through the ingress with the
openai SDK: a request that needs tools, an image, a JSON schema or a long context goes
only to the deployment that declares it, for a least-busy model (the other hands it
back) and a routed one (sent to it directly); none capable is a 400 naming the
parameter."""

from __future__ import annotations

from typing import Any

import openai
import pytest

IMAGE = "data:image/png;base64,iVBORw0KGgo="
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
NEEDS: dict[str, dict[str, Any]] = {
    "tools": {"tools": [TOOL]},
    "vision": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": IMAGE}},
                ],
            }
        ]
    },
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}},
        }
    },
    "context": {"messages": [{"role": "user", "content": "word " * 200}]},
}


def _ask(client: openai.OpenAI, model: str, **extra: Any) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "plain"}]} | extra
    raw = client.chat.completions.with_raw_response.create(model=model, **body)
    return raw.headers["x-promptbus-deployment"]


@pytest.mark.parametrize("model", ["capable-gpt", "capable-rr"])
@pytest.mark.parametrize("need", sorted(NEEDS))
def test_a_need_goes_only_to_the_deployment_that_has_it(
    openai_client: openai.OpenAI, model: str, need: str
) -> None:
    served = {_ask(openai_client, model, **NEEDS[need]) for _ in range(6)}
    assert served == {f"{model}-full"}


def test_a_plain_request_goes_anywhere(openai_client: openai.OpenAI) -> None:
    served = {_ask(openai_client, "capable-rr") for _ in range(6)}
    assert served == {"capable-rr-plain", "capable-rr-full"}  # round-robin over both


def test_none_capable_is_a_400_naming_the_parameter(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(openai_client, "text-only", **NEEDS["vision"])
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    assert body["code"] == "missing_capability"
    assert body["param"] == "messages[0].content[1]"
    assert "vision" in body["message"]
    assert _ask(openai_client, "text-only", **NEEDS["tools"])  # what it has is served


def test_a_responses_request_is_routed_by_its_needs_too(openai_client: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    for _ in range(4):
        raw = openai_client.responses.with_raw_response.create(
            model="capable-rr",
            input="weather",
            tools=[tool],  # type: ignore[list-item]
        )
        assert raw.headers["x-promptbus-deployment"] == "capable-rr-full"
