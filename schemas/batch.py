"""OpenAI's File and Batch objects, the batch input and output line formats, and the
record promptbus keeps per batch (the Batch object plus what resuming needs).

Shapes follow the OpenAI API reference so the official SDK parses them unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import msgspec
from msgspec import Struct, field

BATCH_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
COMPLETIONS_ENDPOINT = "/v1/completions"  # legacy text completions
RESPONSES_ENDPOINT = "/v1/responses"  # stateless: each line holds its whole conversation
# what a batch's lines may call
BATCH_ENDPOINTS = (BATCH_ENDPOINT, EMBEDDINGS_ENDPOINT, COMPLETIONS_ENDPOINT, RESPONSES_ENDPOINT)
COMPLETION_WINDOWS = {"24h": 24 * 3600}


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class FileObject(Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: Literal["file"] = "file"
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(Struct, kw_only=True):
    data: list[FileObject]
    object: Literal["list"] = "list"
    has_more: bool = False


class BatchError(Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(Struct, kw_only=True):
    data: list[BatchError]
    object: Literal["list"] = "list"


class RequestCounts(Struct, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(Struct, kw_only=True):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    object: Literal["batch"] = "batch"
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class BatchList(Struct, kw_only=True):
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class BatchCreate(Struct, forbid_unknown_fields=False, kw_only=True):
    """Body of ``POST /v1/batches``."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchRecord(Struct, kw_only=True):
    """What the batches KV bucket stores per batch: the public object, and while it is
    finalizing the status it will end in (completed, cancelled or expired)."""

    batch: Batch
    outcome: BatchStatus | None = None
    key_id: str | None = None  # the API key that created it (auth.required): lines run as it
    tenant: str | None = None
    # Its key's budget or quota ran out: the error of every line left unanswered.
    refused: LineError | None = None


# ---------------------------------------------------------------- lines


class InputLine(Struct, kw_only=True):
    """One line of an input file, OpenAI format; ``body`` is kept as raw JSON bytes."""

    custom_id: str
    method: str = "POST"
    url: str = BATCH_ENDPOINT
    body: msgspec.Raw = msgspec.Raw(b"null")


class BareLine(Struct, kw_only=True):
    """The CLI also accepts ``{"custom_id", "messages"}`` lines (plus any chat fields)."""

    custom_id: str
    messages: list[Any]


class OutputResponse(Struct, kw_only=True):
    status_code: int
    request_id: str
    body: msgspec.Raw


class LineError(Struct, kw_only=True):
    code: str
    message: str


class OutputLine(Struct, kw_only=True):
    """One line of an output or error file (OpenAI's batch output format)."""

    id: str
    custom_id: str
    response: OutputResponse | None
    error: LineError | None


line_decoder = msgspec.json.Decoder(InputLine)
batch_decoder = msgspec.json.Decoder(BatchRecord)
create_decoder = msgspec.json.Decoder(BatchCreate)
encoder = msgspec.json.Encoder()
