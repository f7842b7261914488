"""``/v1/responses``: the Responses API. A request travels the bus stateless, tagged
``Pb-Api: responses`` on the model's chat subject; each deployment serves it natively or
as chat (``responses_api``; ``broker/responses/chat_turn.py``), and the answer comes
back as the response object or its typed events (docs/apis.md says what is served).
Stored responses (``store``, the default) live in NATS, per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.client import Reply, ReplyStream
from broker.responses import conversation, translation
from broker.responses.store import ResponseStore, StoredResponse
from broker.routing import capabilities
from ingress.http_io import page_limit, reply_headers
from ingress.routes.chat import admitted, observed, read_model_request
from ingress.routes.streams import Event, event_stream, first_of, typed_event
from ingress.state import services, tenant_of
from schemas.chat import encoder
from schemas.envelope import H_DEPLOYMENT, RESPONSES
from schemas.errors import BrokerError, invalid_request, upstream_error
from schemas.responses import (
    DeletedResponse,
    InputItem,
    InputItemList,
    ResponseRequest,
    event_head_decoder,
    response_request_decoder,
)


async def create_response(request: Request) -> Response:
    return await observed(request, _create, "response")


async def _create(request: Request, trace: str, context: dict[str, Any]) -> Response:
    found = services(request)
    broker = found.client
    asked, body = await read_model_request(request, response_request_decoder, context)
    model = found.config.model(asked.model)
    if model is not None and any(d.responses_api == "chat" for d in model.deployments):
        translation.to_chat(asked)  # some deployment serves it as chat: refuse what it cannot
    else:
        translation.check_supported(asked)  # (to_chat checks this too)
    unable = capabilities.unable_for_responses(model, asked, len(body) // 4)
    grant, options = await admitted(request, trace, asked, body, context)
    if unable:
        options["unable"] = unable
    tenant = grant.tenancy.tenant if found.admission.required else None
    history: list[InputItem] = []
    if asked.previous_response_id:
        history = (await found.responses.get(tenant, asked.previous_response_id)).conversation
    sent = conversation.stateless(asked, history)
    turn = Turn(found.responses, tenant, asked, conversation.turn_input(sent))
    options["mode"] = RESPONSES
    limits = grant.rate_headers()
    if asked.stream:
        stream = await broker.open_stream(asked.model, encoder.encode(sent), **options)
        first = await first_of(stream)
        return event_stream(turn.events(first, stream), first, limits)
    reply = await broker.request(asked.model, encoder.encode(sent), parsed=sent, **options)
    headers = limits | reply_headers(reply)
    if reply.status != 200:
        return Response(
            reply.body, status_code=reply.status, media_type="application/json", headers=headers
        )
    answer = await turn.finished(reply)
    return Response(answer, media_type="application/json", headers=headers)


# Stream events that carry the whole response object; the last two end the stream.
_RESPONSE_EVENTS = {"response.created", "response.queued", "response.in_progress"}
_FINISHED_EVENTS = {"response.completed", "response.incomplete"}
_CARRIERS = _RESPONSE_EVENTS | _FINISHED_EVENTS | {"response.failed"}


class Turn:
    """One request's exchange: its answer named as the response promptbus keeps (the
    worker's or the upstream's id is provisional), and stored once finished."""

    def __init__(
        self,
        store: ResponseStore,
        tenant: str | None,
        asked: ResponseRequest,
        conversation: list[InputItem],
    ) -> None:
        self.store, self.tenant, self.asked = store, tenant, asked
        self.conversation = conversation  # up to and including this turn's input
        self.id = translation.new_id("resp")
        self.created_at = translation.created_now()
        self.kept = asked.store is not False

    def named(self, response: dict[str, Any]) -> dict[str, Any]:
        """``response`` under this exchange's id, as the caller asked to keep it."""
        response["id"], response["created_at"] = self.id, self.created_at
        response["previous_response_id"] = self.asked.previous_response_id
        response["store"] = self.kept
        return response

    async def _keep(self, response: dict[str, Any]) -> None:
        """Store the finished response (unless ``store: false``); a response too large
        to store says ``store: false``."""
        if not self.kept:
            return
        output = response.get("output")
        carried = conversation.carried(output) if isinstance(output, list) else []
        items = translation.input_items(self.asked)
        stored = StoredResponse(response, self.conversation + carried, items)
        if not await self.store.put(self.tenant, stored):
            response["store"] = False

    async def finished(self, reply: Reply) -> bytes:
        """A response object from the bus as the caller gets it, stored first."""
        try:
            response = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:
            response = None
        if not isinstance(response, dict):
            deployment = reply.headers.get(H_DEPLOYMENT, "-")
            raise upstream_error(502, deployment, f"not a response object: {reply.body[:200]!r}")
        self.named(response)
        await self._keep(response)
        return encoder.encode(response)

    async def events(self, first: Reply | None, stream: ReplyStream) -> AsyncIterator[bytes]:
        """The stream's events relayed as server-sent events; those carrying the response
        named, the finished one stored before it is sent. A failure on the way is an
        ``error`` event, then ``response.failed``."""
        sequence = -1
        try:
            async for reply in _replies(first, stream):
                body = reply.body
                try:
                    head = event_head_decoder.decode(body)
                    event = msgspec.json.decode(body) if head.type in _CARRIERS else None
                except (msgspec.ValidationError, msgspec.DecodeError):
                    raise upstream_error(
                        502,
                        reply.headers.get(H_DEPLOYMENT, "-"),
                        f"not a Responses event: {body[:200]!r}",
                    ) from None
                sequence = head.sequence_number
                response = event.get("response") if isinstance(event, dict) else None
                if isinstance(response, dict):
                    self.named(response)
                    if head.type in _FINISHED_EVENTS:
                        await self._keep(response)
                    body = encoder.encode(event)
                yield b"event: " + head.type.encode() + b"\ndata: " + body + b"\n\n"
        except BrokerError as exc:
            for failure in self._failure(exc, sequence + 1):
                yield typed_event(failure)
        finally:
            stream.close()

    def _failure(self, exc: BrokerError, sequence: int) -> list[Event]:
        detail = exc.detail
        failed = msgspec.to_builtins(translation.shell(self.asked, self.id, self.created_at))
        failed |= {"status": "failed", "store": False}
        failed["error"] = {"code": detail.code or "server_error", "message": detail.message}
        return [
            {
                "type": "error",
                "sequence_number": sequence,
                "code": detail.code,
                "message": detail.message,
                "param": detail.param,
            },
            {"type": "response.failed", "sequence_number": sequence + 1, "response": failed},
        ]


async def _replies(first: Reply | None, stream: ReplyStream) -> AsyncIterator[Reply]:
    if first is not None:
        yield first
        async for reply in stream:
            yield reply


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
