"""Where a request goes when the deployment holding it cannot answer.

Order: another deployment of the same alias that has not failed this request; then the
alias's ``fallbacks`` in order (``context_window_fallbacks`` for a prompt too long for
the model), skipping aliases whose deployments all failed it already. The request is
re-published with its remaining deadline and the list of failed deployments in
``Pb-Failed``; a pool that finds its own deployment there hands the message back.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from broker.subjects import Subjects
from schemas.config import Config, ModelConfig
from schemas.envelope import RequestMeta


class Failover:
    def __init__(self, config: Config, subjects: Subjects, js: JetStreamContext) -> None:
        self._config = config
        self._subjects = subjects
        self._js = js

    def next_model(
        self, model: ModelConfig, failed: set[str], *, context: bool = False
    ) -> str | None:
        """The alias to try next, or None when every option has failed this request."""
        if not context and any(d.name not in failed for d in model.deployments):
            return model.model_name
        for alias in model.context_window_fallbacks if context else model.fallbacks:
            other = self._config.model(alias)
            if other is not None and any(d.name not in failed for d in other.deployments):
                return alias
        return None

    async def forward(
        self, body: bytes, meta: RequestMeta, model: str, failed: tuple[str, ...]
    ) -> None:
        """Queue the request again for ``model``; JetStream confirms before we ack the old one."""
        moved = RequestMeta(
            request_id=meta.request_id,
            reply_to=meta.reply_to,
            deadline_ms=meta.deadline_ms,
            traceparent=meta.traceparent,
            failed=failed,
        )
        await self._js.publish(
            self._subjects.chat(model),
            body,
            headers=moved.to_headers(),
            stream=self._subjects.stream,
        )
