"""Where a request goes when the deployment holding it cannot answer.

Order: another deployment of the same alias that has not failed this request and whose
breaker is closed (for a routed alias, the one its strategy picks, straight to that
deployment's queue); then the alias's ``fallbacks`` in order (``context_window_fallbacks``
for a prompt too long for the model), skipping aliases with no usable deployment. The
request is re-published with its remaining deadline and the failed deployments in
``Pb-Failed``; a least-busy pool that finds its own deployment there hands it back.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.nats import acks
from broker.nats.subjects import Subjects
from broker.routing.router import Router
from schemas.config import Config, ModelConfig
from schemas.envelope import H_MSG_ID, RequestMeta


class Failover:
    def __init__(
        self,
        config: Config,
        subjects: Subjects,
        js: JetStreamContext,
        is_open: Callable[[str], bool],
        router: Router,
    ) -> None:
        self._config = config
        self._subjects = subjects
        self._js = js
        self._is_open = is_open  # deployment -> its breaker refuses requests now
        self._router = router

    def _usable(self, model: ModelConfig, failed: set[str]) -> bool:
        return any(d.name not in failed and not self._is_open(d.name) for d in model.deployments)

    def next_subject(
        self, model: ModelConfig, failed: set[str], *, context: bool = False
    ) -> str | None:
        """Where to queue the request next, or None when every option has failed it."""
        if not context:
            if model.routing == "least-busy":
                if self._usable(model, failed):
                    return self._subjects.queue(model.model_name, model.mode)
            else:
                target = self._router.choose(model, exclude=failed)
                if target is not None:
                    return self._subjects.dep(target.name)
        for alias in model.context_window_fallbacks if context else model.fallbacks:
            other = self._config.model(alias)
            if other is not None and self._usable(other, failed):
                return self._subjects.queue(alias, other.mode)
        return None

    def can_bypass(self, model: ModelConfig, deployment: str) -> bool:
        """Should ``deployment``, its breaker open, keep pulling to pass requests on?

        For a least-busy alias only when nothing else would take them (every sibling is
        open too and a fallback is usable); otherwise it stops pulling and leaves the
        queue to its siblings, or to itself once half-open. A routed deployment's own
        queue is passed on whenever there is somewhere to send it.
        """
        if model.routing == "least-busy" and any(
            not self._is_open(d.name) for d in model.deployments
        ):
            return False
        return self.next_subject(model, {deployment}) is not None

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
        origin = acks.stream_sequence(msg.reply)
        headers[H_MSG_ID] = f"fwd:{self._subjects.stream}:{origin}:{subject}"
        if origin is None:  # not from JetStream (cannot happen for pulled requests)
            del headers[H_MSG_ID]
        await self._js.publish(subject, msg.data, headers=headers, stream=self._subjects.stream)
