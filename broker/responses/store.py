"""Stored responses (``store``, the default): a KV bucket shared by every ingress, so a
``previous_response_id`` or a ``GET /v1/responses/{id}`` works on any replica. Entries
expire after ``responses.retention_s`` (the bucket's TTL); each belongs to the tenant
whose key made it, and is not found for anybody else."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.nats.provision import ensure_bucket
from broker.nats.subjects import RESPONSES, kv_key
from schemas.config import Config
from schemas.errors import BrokerError, NotFound
from schemas.responses import InputItem, ListedItem

log = logging.getLogger(__name__)

ANYONE = "-"  # the tenant of responses made without auth


class StoredResponse(msgspec.Struct):
    # the response object as the caller got it (a native upstream's extra fields too)
    response: dict[str, Any]
    # the conversation up to and including this response, as input items
    # (broker/responses/conversation.py); ``instructions`` are not carried over, as
    # OpenAI does not carry them either
    conversation: list[InputItem] = []
    # the request's own input, as items with ids (``GET .../input_items``)
    input: list[ListedItem] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StoredResponse)


def response_not_found(response_id: str, param: str | None) -> BrokerError:
    return NotFound(
        404,
        f"No response with id `{response_id}` (it expired, was deleted, was made with "
        "`store: false`, or belongs to another tenant).",
        code="response_not_found",
        param=param,
    )


class ResponseStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, config: Config) -> ResponseStore:
        return cls(await ensure_bucket(js, config, RESPONSES))

    @staticmethod
    def _key(tenant: str | None, response_id: str) -> str:
        return f"{kv_key(tenant or ANYONE)}.{kv_key(response_id)}"

    async def put(self, tenant: str | None, stored: StoredResponse) -> bool:
        """Keep it; False when it is too large for a NATS message (it is then not kept,
        and the response says ``store: false``)."""
        try:
            await self._kv.put(self._key(tenant, stored.response["id"]), _encoder.encode(stored))
        except MaxPayloadError:
            log.warning("response %s not stored: larger than a NATS message", stored.response["id"])
            return False
        return True

    async def get(
        self, tenant: str | None, response_id: str, param: str | None = "previous_response_id"
    ) -> StoredResponse:
        """The stored response; 404 naming ``param`` for an unknown (or another's) id."""
        try:
            entry = await self._kv.get(self._key(tenant, response_id))
        except KeyNotFoundError:
            raise response_not_found(response_id, param) from None
        if entry.value is None:
            raise response_not_found(response_id, param)
        return _decoder.decode(entry.value)

    async def delete(self, tenant: str | None, response_id: str, param: str | None = None) -> None:
        await self.get(tenant, response_id, param)
        await self._kv.purge(self._key(tenant, response_id))
