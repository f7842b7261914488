"""The embeddings reply: the provider's floats, or base64 when the caller asked for it.

The openai SDK asks for ``encoding_format: "base64"`` unless told otherwise (a quarter of
the JSON size) and decodes it itself; providers are always asked for floats, so every
adapter gets base64 for free.
"""

from __future__ import annotations

import base64

import msgspec
import numpy as np

from schemas.chat import EmbeddingList, EmbeddingRequest, encoder


def reply_body(result: EmbeddingList, request: EmbeddingRequest, model: str | None) -> bytes:
    """The ``list`` of embeddings to send back; ``model`` renames the reported model."""
    if request.encoding_format == "base64":
        data = [
            msgspec.structs.replace(
                item,
                embedding=base64.b64encode(
                    np.asarray(item.embedding, dtype="<f4").tobytes()
                ).decode(),
            )
            for item in result.data
        ]
        result = msgspec.structs.replace(result, data=data)
    if model is not None:
        result = msgspec.structs.replace(result, model=model)
    return encoder.encode(result)
