"""Transformations: each edit, their documented order, config validation, and a model
whose profiles rewrite what reaches the provider and what the caller sees."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import openai
import pytest

from schemas.chat import ChatCompletionRequest, SystemMessage, UserMessage
from schemas.config import Config, TransformConfig
from tests.conftest import Stack
from tests.fakes.server import Scripted
from workers.transforms import Transforms


def request(**fields: Any) -> ChatCompletionRequest:
    base = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "caller system"},
            {"role": "user", "content": "hi"},
        ],
    }
    return msgspec.convert(base | fields, ChatCompletionRequest)


def apply(req: ChatCompletionRequest, *profiles: dict[str, Any]) -> ChatCompletionRequest:
    configs = {str(i): msgspec.convert(p, TransformConfig) for i, p in enumerate(profiles)}
    transforms = Transforms.build(configs, list(configs))
    assert transforms is not None
    return transforms.request(req)


def wire(req: ChatCompletionRequest) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.to_builtins(req)
    return value


def test_no_profiles_cost_nothing() -> None:
    assert Transforms.build({}, []) is None


def test_strip_defaults_set_cap_metadata() -> None:
    result = apply(
        request(temperature=1.5, logit_bias={"50256": -100}, user="u1", metadata={"a": "1"}),
        {
            "strip": ["logit_bias", "user"],
            "defaults": {"max_tokens": 500, "user": "default-user", "top_p": 0.5},
            "set": {"seed": 42, "tool_choice": "none"},
            "cap": {"temperature": 0.8, "max_tokens": 256},
            "metadata": {"tenant": "acme"},
        },
    )
    assert wire(result) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "caller system"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.8,  # capped
        "max_tokens": 256,  # defaulted to 500, then capped: cap comes after defaults
        "user": "default-user",  # stripped, then filled in: defaults come after strip
        "top_p": 0.5,
        "seed": 42,
        "tool_choice": "none",
        "metadata": {"a": "1", "tenant": "acme"},
    }


def test_cap_leaves_absent_and_lower_values_alone() -> None:
    result = apply(request(temperature=0.2), {"cap": {"temperature": 0.8, "max_tokens": 10}})
    assert result.temperature == 0.2 and result.max_tokens is None


def test_set_then_cap_in_one_profile_and_profiles_in_list_order() -> None:
    one = apply(request(), {"set": {"temperature": 1.2}, "cap": {"temperature": 0.7}})
    assert one.temperature == 0.7
    two = apply(request(), {"cap": {"temperature": 0.7}}, {"set": {"temperature": 1.2}})
    assert two.temperature == 1.2  # the later profile's set wins


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("prepend", ["ours", "caller system", "dev", "hi"]),
        ("append", ["caller system", "dev", "ours", "hi"]),
        ("replace", ["ours", "hi"]),
    ],
)
def test_system_prompt_modes(mode: str, expected: list[str]) -> None:
    req = request(
        messages=[
            {"role": "system", "content": "caller system"},
            {"role": "developer", "content": "dev"},
            {"role": "user", "content": "hi"},
        ]
    )
    result = apply(req, {"system_prompt": "ours", "system_prompt_mode": mode})
    assert [m.content for m in result.messages] == expected
    first_ours = next(m for m in result.messages if m.content == "ours")
    assert isinstance(first_ours, SystemMessage)
    assert isinstance(result.messages[-1], UserMessage)


def test_response_renames_model_only_when_asked() -> None:
    renamed = Transforms([TransformConfig(response_model="acme-chat")])
    body = b'{"id":"x","model":"gpt-4o","choices":[],"extra":{"model":"inner"}}'
    assert msgspec.json.decode(renamed.response(body)) == {
        "id": "x",
        "model": "acme-chat",
        "choices": [],
        "extra": {"model": "inner"},
    }
    plain = Transforms([TransformConfig(cap={"temperature": 1})])
    assert plain.response(body) is body


def config_with(transforms: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {
        "transforms": transforms,
        "model_list": [
            {"model_name": "m", "transforms": names, "deployments": [{"provider": "mock"}]}
        ],
    }


@pytest.mark.parametrize(
    ("transforms", "names", "message"),
    [
        ({}, ["missing"], "unknown transform profile `missing`"),
        ({"p": {"strip": ["messages"]}}, ["p"], "cannot strip `messages`"),
        ({"p": {"set": {"temperature": 5}}}, ["p"], "<= 2.0"),
        ({"p": {"set": {"colour": "red"}}}, ["p"], "cannot set `colour`"),
        ({"p": {"cap": {"stop": 1}}}, ["p"], "cannot cap `stop`"),
        ({"p": {"system_prompt_mode": "middle"}}, ["p"], "system_prompt_mode"),
    ],
)
def test_bad_profiles_fail_at_load(
    transforms: dict[str, Any], names: list[str], message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(config_with(transforms, names), Config)


def test_profiles_through_the_broker(openai_client: openai.OpenAI, stack: Stack) -> None:
    """``branded`` = profiles safety + brand (tests/fakes/stack.py) in front of Azure."""
    assert stack.fakes is not None
    azure = stack.fakes.azure
    azure.reset()
    raw = openai_client.chat.completions.with_raw_response.create(
        model="branded",
        messages=[{"role": "user", "content": "hello"}],
        temperature=1.9,
        max_tokens=1000,
        logit_bias={"1": 5},
    )
    sent = azure.last.body
    assert sent == {
        "model": "branded-gpt4o",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 64,
        "metadata": {"tenant": "acme"},
        "temperature": 0.8,
    }
    completion = raw.parse()
    assert completion.model == "acme-chat"
    assert raw.headers["x-promptbus-deployment"] == "acme"
    assert completion.model_extra is not None
    assert completion.model_extra["x_promptbus"]["deployment"] == "acme"
    with openai_client.chat.completions.create(
        model="branded", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as stream:
        models = {chunk.model for chunk in stream}
    assert models == {"acme-chat"}


def test_errors_name_the_renamed_deployment(http: httpx.Client, stack: Stack) -> None:
    assert stack.fakes is not None
    stack.fakes.azure.reset()
    boom = {"error": {"code": "500", "message": "boom"}}
    stack.fakes.azure.script(Scripted(status=500, body=boom))
    failed = http.post(
        "/v1/chat/completions",
        json={"model": "branded", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert failed.status_code == 500
    assert failed.headers["x-promptbus-deployment"] == "acme"
    # Operators still see the real deployment in the worker's metrics.
    scraped = httpx.get(stack.worker_metrics).text
    assert 'deployment="branded-azure",lane="interactive",model="branded",status="500"' in scraped
    assert 'deployment="acme"' not in scraped
