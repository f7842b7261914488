"""What a stored response carries into a follow-up (broker/responses/conversation.py):
pure functions, checked against the openai SDK's request types."""

from __future__ import annotations

from typing import Any

import msgspec

from broker.responses import conversation
from schemas.chat import encoder
from schemas.responses import InputItem, response_request_decoder
from tests.fakes.sdk_types import openai_responses_request_problem

OUTPUT: list[dict[str, Any]] = [
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": "part one, ", "annotations": []},
            {"type": "output_text", "text": "part two", "annotations": []},
        ],
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "status": "completed",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"q": 1}',
    },
    {"type": "web_search_call", "id": "ws_1", "status": "completed"},
]


def test_an_answer_is_carried_as_text_and_calls_without_ids() -> None:
    carried = conversation.carried(OUTPUT)
    assert carried == [
        InputItem(role="assistant", content="part one, part two"),
        InputItem(type="function_call", call_id="call_1", name="lookup", arguments='{"q": 1}'),
    ]


def test_a_follow_up_sends_the_whole_conversation_and_no_previous_id() -> None:
    first = response_request_decoder.decode(b'{"model": "m", "input": "hello"}')
    history = conversation.turn_input(first) + conversation.carried(OUTPUT)
    follow = response_request_decoder.decode(
        b'{"model": "m", "input": "and then?", "previous_response_id": "resp_1"}'
    )
    sent = conversation.stateless(follow, history)
    assert sent.previous_response_id is None
    assert sent.input == [*history, InputItem(role="user", content="and then?")]
    body = msgspec.json.decode(encoder.encode(sent))
    assert openai_responses_request_problem(body) is None


def test_a_first_turn_is_sent_as_it_came() -> None:
    asked = response_request_decoder.decode(b'{"model": "m", "input": "just this"}')
    assert conversation.stateless(asked, []) == asked
