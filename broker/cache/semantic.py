"""The semantic cache (opt-in): a prompt close enough to an answered one gets its answer.

Only the last user message is compared by meaning; everything else in the request (model,
parameters, system prompt, earlier turns) must match exactly, so it selects a bucket by
hash. Within the bucket the message's embedding, from a configured OpenAI-compatible
``/embeddings`` endpoint, is compared by cosine similarity with the stored ones; at or
above ``cache.semantic.threshold`` the stored answer is served. The same determinism,
TTL and Cache-Control rules as the exact cache apply (the client checks those first).
``bench/semantic_cache.py`` measures hit and false-hit rates on a labelled set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict

import aiohttp
import msgspec
import numpy as np

from broker.cache.exact import CachedReply
from schemas.chat import ChatCompletionRequest, TextPart, UserMessage, encoder
from schemas.config import SemanticCacheConfig

log = logging.getLogger(__name__)

_PLACEHOLDER = "\x00semantic\x00"


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]


class _EmbeddingList(msgspec.Struct):
    data: list[_EmbeddingItem]


_embeddings_decoder = msgspec.json.Decoder(_EmbeddingList)


class _Bucket:
    def __init__(self) -> None:
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.entries: list[CachedReply] = []


def _split(request: ChatCompletionRequest) -> tuple[str, ChatCompletionRequest] | None:
    """The last user message's text, and the request with that text taken out."""
    messages = list(request.messages)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, UserMessage):
            content = message.content
            if isinstance(content, str):
                text = content
            elif all(isinstance(part, TextPart) for part in content):
                text = " ".join(part.text for part in content if isinstance(part, TextPart))
            else:
                return None  # images, audio, files: no meaning to compare here
            messages[index] = UserMessage(content=_PLACEHOLDER, name=message.name)
            rest = msgspec.structs.replace(
                request, messages=messages, stream=None, stream_options=None, user=None,
                metadata=None, store=None, safety_identifier=None, prompt_cache_key=None,
            )  # fmt: skip
            return text, rest
    return None


class SemanticCache:
    def __init__(self, config: SemanticCacheConfig) -> None:
        assert config.embeddings_base_url is not None
        self.config = config
        self._url = config.embeddings_base_url.rstrip("/") + "/embeddings"
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._count = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _embed(self, text: str) -> np.ndarray | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        payload = encoder.encode({"model": self.config.embeddings_model, "input": text})
        try:
            async with self._session.post(
                self._url,
                data=payload,
                headers={"Content-Type": "application/json", **self._headers},
            ) as response:
                body = await response.read()
                if response.status != 200:
                    log.warning("semantic cache: embeddings answered HTTP %s", response.status)
                    return None
            vector = np.asarray(
                _embeddings_decoder.decode(body).data[0].embedding, dtype=np.float32
            )
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError, IndexError) as exc:
            log.warning("semantic cache: embeddings failed: %s", type(exc).__name__)
            return None
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else None

    def _bucket_key(self, rest: ChatCompletionRequest, model: str, namespace: str) -> str:
        digest = hashlib.sha256(namespace.encode() + b"\0" + model.encode() + b"\0")
        digest.update(encoder.encode(rest))
        return digest.hexdigest()

    async def lookup(
        self, request: ChatCompletionRequest, model: str, max_age: float | None,
        namespace: str = "default",
    ) -> tuple[CachedReply | None, float, tuple[str, np.ndarray] | None]:  # fmt: skip
        """(answer or None, best similarity, what ``store`` needs to remember this one)."""
        split = _split(request)
        if split is None:
            return None, 0.0, None
        text, rest = split
        vector = await self._embed(text)
        if vector is None:
            return None, 0.0, None
        key = self._bucket_key(rest, model, namespace)
        bucket = self._buckets.get(key)
        if bucket is None or not bucket.entries:
            return None, 0.0, (key, vector)
        self._buckets.move_to_end(key)
        similarities = bucket.vectors @ vector
        now = time.time()
        for index in np.argsort(-similarities):
            similarity = float(similarities[index])
            if similarity < self.config.threshold:
                break
            entry = bucket.entries[index]
            fresh = now < entry.expires_at and (max_age is None or now - entry.stored_at <= max_age)
            if fresh:
                return entry, similarity, (key, vector)
        return None, float(similarities.max()), (key, vector)

    def store(
        self, remembered: tuple[str, np.ndarray], body: bytes, deployment: str, ttl: float
    ) -> None:
        key, vector = remembered
        now = time.time()
        bucket = self._buckets.setdefault(key, _Bucket())
        self._buckets.move_to_end(key)
        entry = CachedReply(body=body, deployment=deployment, stored_at=now, expires_at=now + ttl)
        row = vector.reshape(1, -1)
        bucket.vectors = row if not bucket.entries else np.vstack([bucket.vectors, row])
        bucket.entries.append(entry)
        self._count += 1
        while self._count > self.config.max_entries and self._buckets:
            oldest = next(iter(self._buckets.values()))
            oldest.entries.pop(0)
            oldest.vectors = oldest.vectors[1:]
            self._count -= 1
            if not oldest.entries:
                self._buckets.popitem(last=False)
