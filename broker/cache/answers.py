"""The client's caches behind one face: the exact cache first, then (for non-streamed
requests, when enabled) the semantic one; each tenant has its own namespace."""

from __future__ import annotations

import time
from typing import Any

from nats.js import JetStreamContext

from broker.cache.exact import (
    BoundedMemoryCache,
    Cacheable,
    CachedReply,
    CachePolicy,
    NatsKVCache,
    ResponseCache,
)
from broker.cache.semantic import SemanticCache
from broker.nats.provision import ensure_bucket
from broker.nats.subjects import CACHE
from broker.observability import metrics
from schemas.chat import ChatCompletionRequest
from schemas.config import Config
from schemas.envelope import H_AGE, H_CACHE, H_DEPLOYMENT

Remembered = tuple[str, Any]  # what the semantic cache needs to store a fresh answer


class AnswerCache:
    def __init__(self, config: Config, exact: ResponseCache) -> None:
        self._config = config
        self.exact = exact
        semantic = config.cache.semantic
        self.semantic = SemanticCache(semantic) if semantic.enabled else None

    @classmethod
    async def open(cls, js: JetStreamContext, config: Config) -> AnswerCache | None:
        """The caches ``config.cache`` asks for (None when caching is off)."""
        settings = config.cache
        if not settings.enabled:
            return None
        if settings.backend == "nats":
            store: Any = NatsKVCache(await ensure_bucket(js, config, CACHE))
        else:
            store = BoundedMemoryCache(settings.max_entries, settings.max_bytes)
        return cls(config, ResponseCache(settings, store))

    async def close(self) -> None:
        if self.semantic is not None:
            await self.semantic.close()

    def key(self, model: str, parsed: Cacheable | None, namespace: str) -> str | None:
        """The request's cache key; None when it cannot be cached (unparsed, unknown model)."""
        model_config = self._config.model(model)
        if parsed is None or model_config is None:
            return None
        return self.exact.key(parsed, model_config, namespace)

    async def look_up(
        self,
        key: str,
        policy: CachePolicy,
        model: str,
        parsed: Cacheable,
        namespace: str,
        *,
        semantic: bool = True,
    ) -> tuple[CachedReply | None, dict[str, str], Remembered | None]:
        """The cached answer and the reply headers naming it, or None; and what the
        semantic cache needs to remember a fresh answer (None without it)."""
        verdict, hit, remembered = "hit", await self.exact.get(key, policy.max_age), None
        chat = isinstance(parsed, ChatCompletionRequest)  # legacy completions: exact only
        if hit is None and semantic and chat and self.semantic is not None:
            assert isinstance(parsed, ChatCompletionRequest)
            verdict = "semantic-hit"
            hit, _, remembered = await self.semantic.lookup(
                parsed, model, policy.max_age, namespace
            )
        metrics.CACHE.labels(model, verdict if hit else "miss").inc()
        if hit is None:
            return None, {}, remembered
        age = str(int(time.time() - hit.stored_at))
        return hit, {H_DEPLOYMENT: hit.deployment, H_CACHE: verdict, H_AGE: age}, remembered

    async def store(
        self, key: str, model: str, body: bytes, deployment: str, remembered: Remembered | None
    ) -> None:
        """Keep a fresh answer for the model's TTL, in both caches."""
        model_config = self._config.model(model)
        assert model_config is not None
        ttl = self.exact.ttl(model_config)
        await self.exact.put(key, body, deployment, ttl)
        if self.semantic is not None and remembered is not None:
            self.semantic.store(remembered, body, deployment, ttl)
