"""``/v1/responses``: the Responses API, served as the chat request it means (the
translation is ``broker/responses/translation.py``; docs/apis.md says what is
served). Stored responses (``store``, the default) live in NATS, per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.client import Reply, ReplyStream
from broker.responses import translation
from broker.responses.store import ResponseStore, StoredResponse
from ingress.http_io import page_limit, reply_headers
from ingress.routes.chat import admitted, observed, read_model_request
from ingress.routes.streams import Event, event_stream, first_of, translated
from ingress.state import services, tenant_of
from schemas.chat import ChatCompletionRequest, Message, completion_decoder, encoder
from schemas.errors import invalid_request
from schemas.responses import DeletedResponse, InputItemList, ListedItem, response_request_decoder
from schemas.responses import Response as ResponseObject


async def create_response(request: Request) -> Response:
    return await observed(request, _create, "response")


async def _create(request: Request, trace: str, context: dict[str, Any]) -> Response:
    found = services(request)
    broker = found.client
    asked, body = await read_model_request(request, response_request_decoder, context)
    grant, options = await admitted(request, trace, asked, body, context)
    tenant = grant.tenancy.tenant if found.admission.required else None
    history: list[Message] = []
    if asked.previous_response_id:
        history = (await found.responses.get(tenant, asked.previous_response_id)).messages
    chat = translation.to_chat(asked, history)
    chat_body = encoder.encode(chat)
    base = translation.shell(asked, translation.new_id("resp"), translation.created_now())
    turn = Turn(found.responses, tenant, chat, base, translation.input_items(asked))
    options["parsed"] = chat
    limits = grant.rate_headers()
    if chat.stream:
        stream = await broker.open_stream(asked.model, chat_body, **options)
        first = await first_of(stream)
        return event_stream(_events(turn, first, stream), first, limits)
    reply = await broker.request(asked.model, chat_body, **options)
    headers = limits | reply_headers(reply)
    if reply.status != 200:
        return Response(
            reply.body, status_code=reply.status, media_type="application/json", headers=headers
        )
    answer = translation.to_response(completion_decoder.decode(reply.body), base)
    answer = await turn.keep(answer)
    return Response(encoder.encode(answer), media_type="application/json", headers=headers)


class Turn:
    """One request's conversation: what is stored once its response is finished."""

    def __init__(
        self,
        store: ResponseStore,
        tenant: str | None,
        chat: ChatCompletionRequest,
        base: ResponseObject,
        items: list[ListedItem],
    ) -> None:
        self.store, self.tenant, self.base, self.items = store, tenant, base, items
        system = 1 if base.instructions else 0  # instructions are not carried over
        self.messages = chat.messages[system:]

    async def keep(self, response: ResponseObject) -> ResponseObject:
        """Store the finished response (unless ``store: false``); what the caller sees."""
        if not response.store:
            return response
        messages = self.messages + translation.output_messages(response)
        stored = StoredResponse(response, messages, self.items)
        if not await self.store.put(self.tenant, stored):
            response.store = False
        return response


def _events(turn: Turn, first: Reply | None, stream: ReplyStream) -> AsyncIterator[bytes]:
    """Chat chunks as the Responses stream's typed events; the finished response is
    stored before ``response.completed`` says whether it was."""
    events = translation.ResponseEvents(turn.base)

    async def closing() -> list[Event]:
        last = events.finish()
        await turn.keep(events.response)
        last[-1]["response"]["store"] = events.response.store
        return last

    return translated(first, stream, events.start(), events.chunk, closing, events.error)


async def retrieve_response(request: Request) -> Response:
    found = services(request)
    response_id = request.path_params["response_id"]
    stored = await found.responses.get(tenant_of(request), response_id, param=None)
    return Response(encoder.encode(stored.response), media_type="application/json")


async def list_input_items(request: Request) -> Response:
    """The stored response's input items, paged as OpenAI pages them (``limit``,
    ``order`` desc by default, ``after`` an item id)."""
    found = services(request)
    response_id = request.path_params["response_id"]
    limit = page_limit(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_request("order must be `asc` or `desc`.", param="order")
    stored = await found.responses.get(tenant_of(request), response_id, param=None)
    items = stored.input if order == "asc" else stored.input[::-1]
    after = request.query_params.get("after")
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise invalid_request(f"No input item `{after}` in this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    listed = InputItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(items) > limit,
    )
    return Response(encoder.encode(listed), media_type="application/json")


async def delete_response(request: Request) -> Response:
    found = services(request)
    response_id = request.path_params["response_id"]
    await found.responses.delete(tenant_of(request), response_id, param=None)
    return Response(encoder.encode(DeletedResponse(response_id)), media_type="application/json")
