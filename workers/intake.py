"""The intake of a routed model: move each request to the queue of the deployment the
model's strategy picks (see broker/routing/router.py). Clients that route themselves (the
Python client, the ingress) publish to the deployment's queue directly and skip this hop;
plain NATS clients publishing to ``pb.chat.<model>`` go through it."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.config import ModelConfig
from schemas.envelope import RequestMeta
from schemas.errors import deadline_exceeded
from workers.failover import Failover
from workers.replies import reply_error

log = logging.getLogger(__name__)

UNROUTABLE_RETRY_S = 1.0  # no deployment can take it now: look again after this long


class Intake:
    def __init__(self, nc: NATS, model: ModelConfig, failover: Failover) -> None:
        self._nc = nc
        self._model = model
        self._failover = failover

    async def handle(self, msg: Msg) -> None:
        meta = RequestMeta.from_headers(msg.headers)
        remaining = meta.remaining()
        if remaining is not None and remaining <= 0:
            error = deadline_exceeded(0, "while the request waited in the queue")
            await reply_error(self._nc, meta, error, f"{self._model.model_name} (intake)")
            await msg.ack()
            return
        subject = self._failover.router.next_subject(self._model, meta.failed)
        if subject is None:
            wait = UNROUTABLE_RETRY_S if remaining is None else min(UNROUTABLE_RETRY_S, remaining)
            await msg.nak(delay=wait)
            return
        await self._failover.forward(msg, meta, subject, meta.failed)
        await msg.ack()
