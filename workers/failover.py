"""Passing a request on when the deployment holding it cannot answer.

Where it goes is the router's decision (``broker/routing/router.py``, ``next_subject``);
here it is re-published with its remaining deadline and the failed deployments in
``Pb-Failed``; a least-busy pool that finds its own deployment there hands it back.
"""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.nats import acks
from broker.nats.subjects import Subjects
from broker.routing.router import Router
from schemas.config import ModelConfig
from schemas.envelope import H_MSG_ID, RequestMeta
from workers.blocks import LineMsg


class Failover:
    def __init__(self, subjects: Subjects, js: JetStreamContext, router: Router) -> None:
        self._subjects = subjects
        self._js = js
        self.router = router

    def can_bypass(self, model: ModelConfig, deployment: str) -> bool:
        """Should ``deployment``, its breaker open, keep pulling to pass requests on?

        For a least-busy alias only when nothing else would take them (every sibling is
        open too and a fallback is usable); otherwise it stops pulling and leaves the
        queue to its siblings, or to itself once half-open. A routed deployment's own
        queue is passed on whenever there is somewhere to send it.
        """
        if model.routing == "least-busy" and self.router.usable(model):
            return False
        return self.router.next_subject(model, {deployment}) is not None

    async def forward(
        self, msg: Msg, meta: RequestMeta, subject: str, failed: tuple[str, ...]
    ) -> None:
        """Queue the request again; JetStream confirms before the caller acks the old one.

        The de-duplication id is the original's stream sequence and the target: a
        redelivered original forwarded twice is stored once, while two requests that
        happen to share a caller's request id stay two requests.
        """
        # Accepted once already: no enqueue-by limit on the copy (it is stored late).
        headers = msgspec.structs.replace(meta, failed=failed, enqueue_by_ms=None).to_headers()
        origin: int | str | None = acks.stream_sequence(msg.reply)
        if isinstance(msg, LineMsg):  # lines of one block share its sequence
            origin = msg.key
        headers[H_MSG_ID] = f"fwd:{self._subjects.stream}:{origin}:{subject}"
        if origin is None:  # not from JetStream (cannot happen for pulled requests)
            del headers[H_MSG_ID]
        await self._js.publish(subject, msg.data, headers=headers, stream=self._subjects.stream)
