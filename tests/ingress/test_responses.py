"""``/v1/responses`` with the official openai SDK: ``responses.create``, ``responses.stream``,
stored responses and ``previous_response_id``, function tools, and the clear 400s for what
is not served; each through a deployment that speaks chat and one that speaks Responses
natively (what that upstream is sent is checked against the SDK's own request types). The
mock answers (it echoes the last user text; see workers/mock/content.py for its tool
calls)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from broker.client import BrokerClient
from schemas.envelope import RESPONSES
from schemas.settings import load_config
from tests.broker.tenancy.test_tenancy import Tenancy, tenancy  # noqa: F401 (fixture)
from tests.conftest import Stack
from tests.fakes.sdk_types import openai_responses_request_problem

# Served through chat (the in-process mock), and natively (an OpenAI-compatible upstream
# with `responses_api: native`): the SDK sees the same either way.
MODELS = ["mock-gpt", "native-gpt"]
TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "look a word up",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.mark.parametrize("model", MODELS)
def test_create_answers_as_a_response(openai_client: openai.OpenAI, model: str) -> None:
    response = openai_client.responses.create(
        model=model, input="hello there", instructions="be brief", metadata={"k": "v"}
    )
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == "mock reply to: hello there"
    assert response.instructions == "be brief" and response.metadata == {"k": "v"}
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None
    assert response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5


@pytest.mark.parametrize("model", MODELS)
def test_input_items_and_max_output_tokens(openai_client: openai.OpenAI, model: str) -> None:
    response = openai_client.responses.create(
        model=model,
        input=[
            {"role": "developer", "content": "answer in one word"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a b"}]},
        ],
        max_output_tokens=2,
    )
    assert response.output_text == "mock reply"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("model", MODELS)
def test_stream_has_the_typed_events(openai_client: openai.OpenAI, model: str) -> None:
    kinds: list[str] = []
    deltas: list[str] = []
    with openai_client.responses.stream(model=model, input="stream me") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(deltas) == "mock reply to: stream me" == final.output_text
    assert final.usage is not None and final.usage.output_tokens == 5
    stored = openai_client.responses.retrieve(final.id)  # streamed responses are kept too
    assert stored.output_text == final.output_text


@pytest.mark.parametrize("model", MODELS)
def test_previous_response_id_continues_the_conversation(
    openai_client: openai.OpenAI, model: str
) -> None:
    first = openai_client.responses.create(model=model, input="one two three")
    alone = openai_client.responses.create(model=model, input="next", store=False)
    follow = openai_client.responses.create(
        model=model, input="next", previous_response_id=first.id
    )
    assert follow.output_text == "mock reply to: next"
    assert follow.previous_response_id == first.id
    assert follow.usage is not None and alone.usage is not None and first.usage is not None
    # The mock counts a word per prompt token: the first turn (its input and answer) came
    # along with the second.
    carried = first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens == alone.usage.input_tokens + carried


def test_stored_responses_can_be_read_and_deleted(openai_client: openai.OpenAI) -> None:
    made = openai_client.responses.create(model="mock-gpt", input="keep me")
    assert made.store is True
    assert openai_client.responses.retrieve(made.id).output_text == "mock reply to: keep me"
    deleted = openai_client.responses.delete(made.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(made.id)
    unkept = openai_client.responses.create(model="mock-gpt", input="forget me", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(unkept.id)
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.responses.create(
            model="mock-gpt", input="x", previous_response_id="resp_nothing"
        )
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_input_items_are_listed_with_the_sdk(
    openai_client: openai.OpenAI, http: httpx.Client
) -> None:
    made = openai_client.responses.create(
        model="mock-gpt",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "an answer"},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"role": "user", "content": [{"type": "input_text", "text": "last"}]},
        ],
        tools=[TOOL],
    )
    listed = openai_client.responses.input_items.list(made.id)
    items = list(listed)  # newest first, as OpenAI lists them
    assert [item.type for item in items] == [
        "message",
        "function_call_output",
        "function_call",
        "message",
        "message",
    ]
    assert all(item.id and item.status == "completed" for item in items)  # type: ignore[union-attr]
    first = items[-1]
    assert first.type == "message" and first.role == "user"
    assert first.content[0].type == "input_text" and first.content[0].text == "first"  # type: ignore[union-attr]
    assert items[3].content[0].type == "output_text"  # type: ignore[union-attr]
    page = openai_client.responses.input_items.list(made.id, order="asc", limit=2)
    assert [i.id for i in page.data] == [items[-1].id, items[-2].id] and page.has_more
    rest = openai_client.responses.input_items.list(made.id, order="asc", after=page.data[-1].id)
    assert [i.id for i in rest.data] == [i.id for i in items[::-1][2:]] and not rest.has_more
    plain = openai_client.responses.create(model="mock-gpt", input="just text")
    [item] = list(openai_client.responses.input_items.list(plain.id))
    assert item.type == "message" and item.content[0].text == "just text"  # type: ignore[union-attr]
    for query, param in [("limit=0", "limit"), ("order=up", "order"), ("after=nope", "after")]:
        refused = http.get(f"/v1/responses/{made.id}/input_items?{query}")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert http.get("/v1/responses/resp_nothing/input_items").status_code == 404


@pytest.mark.parametrize("model", MODELS)
def test_function_tools_round_trip(openai_client: openai.OpenAI, model: str) -> None:
    called = openai_client.responses.create(
        model=model, input="weather", tools=[TOOL], tool_choice="required"
    )
    [call] = called.output
    assert call.type == "function_call" and call.name == "lookup"
    assert json.loads(call.arguments) == {"text": "weather"}
    answered = openai_client.responses.create(
        model=model,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[TOOL],
    )
    assert answered.output_text == "mock reply to tool output: sunny"
    # The same conversation sent whole (no stored state): the call item, then its output.
    whole = openai_client.responses.create(
        model=model,
        store=False,
        input=[
            {"role": "user", "content": "weather"},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        ],
        tools=[TOOL],
    )
    assert whole.output_text == "mock reply to tool output: rain"


@pytest.mark.parametrize("model", MODELS)
def test_streamed_function_call(openai_client: openai.OpenAI, model: str) -> None:
    arguments: list[str] = []
    with openai_client.responses.stream(
        model=model,
        input="stream a call",
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "lookup"},
    ) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call"
    assert json.loads("".join(arguments)) == json.loads(call.arguments) == {"text": "stream a call"}


def test_json_schema_format_is_passed(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(
        model="upstream-gpt",
        input="give json",
        text={
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                "strict": True,
            }
        },
    )
    assert response.status == "completed"
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"surprise": 1}, None),
        ({"input": [{"type": "computer_call_output", "call_id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"temperature": 9}, "temperature"),
    ],
)
def test_what_is_not_served_is_a_clear_400(
    http: httpx.Client, extra: dict[str, object], param: str | None
) -> None:
    response = http.post("/v1/responses", json={"model": "mock-gpt", "input": "x"} | extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    else:
        assert "surprise" in error["message"]


def test_a_tenant_reads_only_its_own_responses(tenancy: Tenancy) -> None:  # noqa: F811
    mine = tenancy.create_key(tenant="resp-a")
    theirs = tenancy.create_key(tenant="resp-b")
    base = tenancy.ingresses[0]
    made = httpx.post(
        f"{base}/v1/responses",
        json={"model": "mock-gpt", "input": "secret plans"},
        headers={"Authorization": f"Bearer {mine}"},
        timeout=20,
    )
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]
    other = tenancy.ingresses[-1]  # another replica finds it: it is kept in NATS
    assert (
        httpx.get(
            f"{other}/v1/responses/{response_id}", headers={"Authorization": f"Bearer {mine}"}
        ).json()["output"][0]["content"][0]["text"]
        == "mock reply to: secret plans"
    )
    for attempt in (
        httpx.get(
            f"{base}/v1/responses/{response_id}", headers={"Authorization": f"Bearer {theirs}"}
        ),
        httpx.post(
            f"{base}/v1/responses",
            json={"model": "mock-gpt", "input": "x", "previous_response_id": response_id},
            headers={"Authorization": f"Bearer {theirs}"},
            timeout=20,
        ),
    ):
        assert attempt.status_code == 404, attempt.text
    assert httpx.get(f"{base}/v1/responses/{response_id}").status_code == 401
    items = f"{base}/v1/responses/{response_id}/input_items"
    assert httpx.get(items, headers={"Authorization": f"Bearer {theirs}"}).status_code == 404
    assert httpx.get(items, headers={"Authorization": f"Bearer {mine}"}).status_code == 200


def test_openapi_lists_the_routes(stack: Stack) -> None:
    paths = httpx.get(f"{stack.ingress}/openapi.json").json()["paths"]
    assert "post" in paths["/v1/responses"]
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "get" in paths["/v1/responses/{response_id}/input_items"]


# ---------------------------------------------------------------- native deployments


def _native_stats(stack: Stack, upstream: str = "native") -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{stack.upstream}/u/{upstream}/_stats").json()
    return stats


def test_a_native_upstream_gets_a_responses_body_it_stores_nothing_of(
    openai_client: openai.OpenAI, stack: Stack
) -> None:
    before = _native_stats(stack)["responses"]
    made = openai_client.responses.create(
        model="native-gpt", input="hello native", instructions="be brief", max_output_tokens=50
    )
    stats = _native_stats(stack)
    assert stats["responses"] == before + 1  # the upstream's /responses, not its chat
    sent = stats["last_responses_request"]
    assert openai_responses_request_problem(sent) is None
    assert sent["store"] is False and sent["model"] == "gpt-4o-mini"  # the upstream's name
    assert sent["input"] == "hello native" and sent["instructions"] == "be brief"
    assert made.output_text == "mock reply to: hello native"
    assert made.store is True and made.id.startswith("resp_")  # promptbus's id, kept by it
    assert openai_client.responses.retrieve(made.id).output_text == made.output_text


def test_a_follow_up_sends_a_native_upstream_the_whole_conversation(
    openai_client: openai.OpenAI, stack: Stack
) -> None:
    first = openai_client.responses.create(model="native-gpt", input="one two")
    called = openai_client.responses.create(
        model="native-gpt",
        previous_response_id=first.id,
        input="weather",
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice="required",
    )
    [call] = called.output
    assert call.type == "function_call"
    answered = openai_client.responses.create(
        model="native-gpt",
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert answered.output_text == "mock reply to tool output: sunny"
    assert answered.previous_response_id == called.id
    sent = _native_stats(stack)["last_responses_request"]
    assert openai_responses_request_problem(sent) is None
    assert "previous_response_id" not in sent
    assert sent["input"] == [
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "mock reply to: one two"},
        {"role": "user", "content": "weather"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "lookup",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]


def test_a_failed_native_deployment_fails_over_to_a_chat_one(
    openai_client: openai.OpenAI, stack: Stack
) -> None:
    control = f"{stack.upstream}/u/native-down/_control"
    httpx.post(control, json={"error_rate": 1.0, "error_status": 503}).raise_for_status()
    before = _native_stats(stack, "native-down")["responses"]
    raw = openai_client.responses.with_raw_response.create(
        model="native-then-chat", input="carry on"
    )
    made = raw.parse()
    assert made.output_text == "mock reply to: carry on"
    assert raw.headers["x-promptbus-deployment"] == "chat-mock"
    assert raw.headers["x-promptbus-failover-from"] == "native-down"
    assert _native_stats(stack, "native-down")["responses"] == before + 1
    with openai_client.responses.stream(model="native-then-chat", input="stream on") as stream:
        final = stream.get_final_response()
    assert final.output_text == "mock reply to: stream on"
    assert openai_client.responses.retrieve(final.id).output_text == final.output_text


async def test_over_nats_a_responses_body_is_served_stateless(stack: Stack) -> None:
    """The bus contract (docs/subjects.md): a Responses body tagged ``Pb-Api: responses``
    on the model's chat subject gets the response object; it must carry its whole
    conversation (no previous_response_id)."""
    client = await BrokerClient.connect(load_config(stack.config_path), stack.nats_url)
    try:
        for model in MODELS:
            body = {"model": model, "input": "over the bus"}
            reply = await client.request(model, json.dumps(body).encode(), mode=RESPONSES)
            assert reply.status == 200, reply.body
            answer = json.loads(reply.body)
            assert answer["object"] == "response"
            assert answer["output"][0]["content"][0]["text"] == "mock reply to: over the bus"
            chained = body | {"previous_response_id": "resp_1"}
            refused = await client.request(model, json.dumps(chained).encode(), mode=RESPONSES)
            assert refused.status == 400
            assert json.loads(refused.body)["error"]["param"] == "previous_response_id"
    finally:
        await client.close()


def test_a_native_answer_is_cached_and_named_anew(
    openai_client: openai.OpenAI, stack: Stack
) -> None:
    """temperature 0: the second ask is the cache's answer, not the upstream's, under a
    response id of its own (stored as its own, so it can be continued)."""
    before = _native_stats(stack)["responses"]
    ask = openai_client.responses.with_raw_response.create
    first = ask(model="native-gpt", input="cache me natively", temperature=0)
    second = ask(model="native-gpt", input="cache me natively", temperature=0)
    assert first.headers["x-promptbus-cache"] == "miss"
    assert second.headers["x-promptbus-cache"] == "hit"
    assert _native_stats(stack)["responses"] == before + 1
    again = second.parse()
    assert again.output_text == first.parse().output_text == "mock reply to: cache me natively"
    assert again.id != first.parse().id
    assert openai_client.responses.retrieve(again.id).id == again.id


def test_built_in_tools_reach_a_native_upstream(http: httpx.Client, stack: Stack) -> None:
    """Refused at the door for a model with a chat deployment (above); a native-only
    model passes them on, and here the upstream (the mock has none) refuses them."""
    before = _native_stats(stack)["responses"]
    body = {"model": "native-gpt", "input": "x", "tools": [{"type": "web_search"}]}
    refused = http.post("/v1/responses", json=body)
    assert _native_stats(stack)["responses"] == before + 1
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools[0].type"


def test_a_native_stream_cut_mid_way_ends_with_error_and_failed(
    http: httpx.Client, stack: Stack
) -> None:
    """The upstream drops the connection after three events: the caller gets those, then
    an ``error`` event and ``response.failed`` (with promptbus's id), and nothing is
    stored."""
    control = f"{stack.upstream}/u/native/_control"
    httpx.post(control, json={"drop_after_chunks": 3}).raise_for_status()
    try:
        body = {"model": "native-gpt", "input": "cut me off", "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    finally:
        httpx.post(control, json={"drop_after_chunks": None}).raise_for_status()
    events = [json.loads(line[6:]) for line in lines]
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[3:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["id"] == events[0]["response"]["id"] and failed["status"] == "failed"
    assert [e["sequence_number"] for e in events] == list(range(5))
    assert http.get(f"/v1/responses/{failed['id']}").status_code == 404


@pytest.mark.parametrize("model", MODELS)
def test_bodies_and_events_pass_the_sdks_strict_types(http: httpx.Client, model: str) -> None:
    """The SDK parses leniently; its types validated strictly catch a field it would
    miss (the answer and every stream event, native and through chat)."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    body = {"model": model, "input": "strictly", "instructions": "x", "tools": [TOOL]}
    made = http.post("/v1/responses", json=body)
    assert made.status_code == 200, made.text
    assert Response.model_validate_json(made.text).output_text == "mock reply to: strictly"
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    with http.stream("POST", "/v1/responses", json=body | {"stream": True}) as stream:
        events = [
            adapter.validate_json(line[6:])
            for line in stream.iter_lines()
            if line.startswith("data: ")
        ]
    assert events[-1].type == "response.completed"
