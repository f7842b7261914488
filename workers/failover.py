"""Where a request goes when the deployment holding it cannot answer.

Order: another deployment of the same alias that has not failed this request and whose
breaker is closed; then the alias's ``fallbacks`` in order (``context_window_fallbacks``
for a prompt too long for the model), skipping aliases with no usable deployment. The
request is re-published with its remaining deadline and the list of failed deployments
in ``Pb-Failed``; a pool that finds its own deployment there hands the message back.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js import JetStreamContext

from broker.subjects import Subjects
from schemas.config import Config, ModelConfig
from schemas.envelope import RequestMeta


def _never_open(deployment: str) -> bool:
    return False


class Failover:
    def __init__(
        self,
        config: Config,
        subjects: Subjects,
        js: JetStreamContext,
        is_open: Callable[[str], bool] = _never_open,
    ) -> None:
        self._config = config
        self._subjects = subjects
        self._js = js
        self._is_open = is_open  # deployment -> its breaker refuses requests now

    def _usable(self, model: ModelConfig, failed: set[str]) -> bool:
        return any(d.name not in failed and not self._is_open(d.name) for d in model.deployments)

    def next_model(
        self, model: ModelConfig, failed: set[str], *, context: bool = False
    ) -> str | None:
        """The alias to try next, or None when every option has failed this request."""
        if not context and self._usable(model, failed):
            return model.model_name
        for alias in model.context_window_fallbacks if context else model.fallbacks:
            other = self._config.model(alias)
            if other is not None and self._usable(other, failed):
                return alias
        return None

    def can_bypass(self, model: ModelConfig) -> bool:
        """Should an open deployment of ``model`` keep pulling, to pass requests on?

        Only when nothing else would take them: all its sibling deployments are open too
        and a fallback model is usable. Otherwise it stops pulling and leaves the queue
        to its siblings, or to itself once half-open.
        """
        if any(not self._is_open(d.name) for d in model.deployments):
            return False
        return self.next_model(model, set()) is not None

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
