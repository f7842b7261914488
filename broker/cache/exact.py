"""The exact response cache: identical deterministic requests are answered once.

What is cached: successful non-streamed responses to requests that are deterministic
(``temperature`` 0 or a ``seed``), unless ``cache.deterministic_only`` is off. With
``cache.streams`` on, a streamed request may also be answered from the cache, replayed as
chunks (streams read the cache; answers are stored from non-streamed requests). The key is a
SHA-256 of the namespace (the tenant; ``default`` until tenants exist), the model and every
request field that changes the output; ``stream``, ``stream_options``, ``user``,
``metadata``, ``store``, ``safety_identifier`` and ``prompt_cache_key`` do not.

Freshness: ``cache.ttl_s``, a model's ``cache_ttl_s`` (0 turns caching off for it), and the
request's ``Cache-Control``: ``no-cache`` skips the lookup (the fresh answer is stored),
``no-store`` skips both, ``max-age=N`` accepts only entries at most N seconds old.

Backends are aiocache caches: ``memory`` (per process, LRU bounded by entries and bytes)
or ``nats`` (a JetStream KV bucket shared by every process).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any, Literal

import msgspec
from aiocache.backends.memory import SimpleMemoryBackend
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from schemas.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    Usage,
    completion_decoder,
    encoder,
)
from schemas.completions import CompletionRequest
from schemas.config import CacheConfig, ModelConfig
from schemas.responses import ResponseRequest

Verdict = Literal["hit", "miss", "bypass"]

# What the exact cache keys: the bodies whose answer is one JSON object.
Cacheable = ChatCompletionRequest | CompletionRequest | ResponseRequest


class CachedReply(msgspec.Struct):
    body: bytes
    deployment: str
    stored_at: float
    expires_at: float


_entry_decoder = msgspec.json.Decoder(CachedReply)


def chunks_from_completion(body: bytes, include_usage: bool) -> list[bytes]:
    """Replay a cached ``chat.completion`` as the chunks a stream would have carried:
    per choice a role chunk, its whole content in one chunk, and its finish chunk; then the
    usage chunk if the request asked for it."""
    completion = completion_decoder.decode(body)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        return encoder.encode(
            ChatCompletionChunk(
                id=completion.id,
                created=completion.created,
                model=completion.model,
                choices=choices,
                usage=usage,
                system_fingerprint=completion.system_fingerprint,
            )
        )

    out = []
    for choice in completion.choices:
        message = choice.message
        out.append(
            chunk([ChunkChoice(index=choice.index, delta=Delta(role="assistant", content=""))])
        )
        delta = Delta(content=message.content, refusal=message.refusal)
        out.append(chunk([ChunkChoice(index=choice.index, delta=delta)]))
        out.append(
            chunk(
                [ChunkChoice(index=choice.index, delta=Delta(), finish_reason=choice.finish_reason)]
            )
        )
    if include_usage and completion.usage is not None:
        out.append(chunk([], completion.usage))
    return out


class CachePolicy(msgspec.Struct, frozen=True):
    lookup: bool = True
    store: bool = True
    max_age: float | None = None

    @classmethod
    def parse(cls, header: str | None) -> CachePolicy:
        if not header:
            return _DEFAULT_POLICY
        lookup, store, max_age = True, True, None
        for directive in header.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name == "no-cache":
                lookup = False
            elif name == "no-store":
                lookup = store = False
            elif name == "max-age":
                try:
                    max_age = max(0.0, float(value.strip('"')))
                except ValueError:
                    continue
        return cls(lookup, store, max_age)


_DEFAULT_POLICY = CachePolicy()


class BoundedMemoryCache(SimpleMemoryBackend):  # type: ignore[misc]
    """aiocache's memory backend with least-recently-used eviction by entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(serializer=NullSerializer(), **kwargs)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> bytes | None:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    async def _set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> bool:
        old = self._cache.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._cache[key] = value
        self._bytes += len(value)
        while self._cache and (
            len(self._cache) > self._max_entries or self._bytes > self._max_bytes
        ):
            _, evicted = self._cache.popitem(last=False)
            self._bytes -= len(evicted)
        return True

    async def _delete(self, key: str, _conn: Any = None) -> int:
        old = self._cache.pop(key, None)
        if old is None:
            return 0
        self._bytes -= len(old)
        return 1


class NatsKVCache(BaseCache):  # type: ignore[misc]
    """An aiocache backend on a JetStream KV bucket: one cache for every process.

    Expiry is checked on read from the entry itself; the bucket's own max-age (the global
    TTL) removes what nobody reads again.
    """

    def __init__(self, kv: KeyValue, **kwargs: Any) -> None:
        super().__init__(serializer=NullSerializer(), **kwargs)
        self._kv = kv

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value or None

    async def _set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> bool:
        await self._kv.put(key, value)
        return True

    async def _delete(self, key: str, _conn: Any = None) -> int:
        await self._kv.delete(key)
        return 1


class ResponseCache:
    def __init__(self, config: CacheConfig, backend: BaseCache) -> None:
        self.config = config
        self._backend = backend

    def ttl(self, model: ModelConfig) -> float:
        return self.config.ttl_s if model.cache_ttl_s is None else model.cache_ttl_s

    def key(
        self,
        request: Cacheable,
        model: ModelConfig,
        namespace: str = "default",
    ) -> str | None:
        """The cache key, or None when this request must not be cached. Chat, legacy
        completions and Responses never share a key: their bodies differ (``messages``,
        ``prompt``, ``input``)."""
        if (request.stream and not self.config.streams) or self.ttl(model) <= 0:
            return None
        if not isinstance(request, ChatCompletionRequest) and request.stream:
            return None  # replayed streams are chat chunks
        deterministic = request.temperature == 0 or request.seed is not None
        if self.config.deterministic_only and not deterministic:
            return None
        canonical: Cacheable
        if isinstance(request, CompletionRequest):
            canonical = msgspec.structs.replace(
                request, stream=None, stream_options=None, user=None
            )
        else:
            canonical = msgspec.structs.replace(
                request,
                stream=None,
                stream_options=None,
                user=None,
                metadata=None,
                store=None,
                safety_identifier=None,
                prompt_cache_key=None,
            )
        digest = hashlib.sha256(namespace.encode() + b"\0" + model.model_name.encode() + b"\0")
        digest.update(encoder.encode(canonical))
        return digest.hexdigest()

    async def get(self, key: str, max_age: float | None) -> CachedReply | None:
        raw = await self._backend.get(key)
        if raw is None:
            return None
        try:
            entry = _entry_decoder.decode(raw)
        except msgspec.DecodeError:
            return None
        now = time.time()
        if now >= entry.expires_at or (max_age is not None and now - entry.stored_at > max_age):
            return None
        return entry

    async def put(self, key: str, body: bytes, deployment: str, ttl: float) -> None:
        now = time.time()
        entry = CachedReply(body=body, deployment=deployment, stored_at=now, expires_at=now + ttl)
        await self._backend.set(key, encoder.encode(entry), ttl=ttl)
