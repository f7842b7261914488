"""A block of batch lines carried in one batch-lane message.

One JetStream message per line cost ~7 messages through nats-server and a pull, an ack
and its confirmation in the worker for every line. The batcher packs consecutive lines
for the same model into one message instead: its ``Pb-Lines`` header says how many, and
its body is a MessagePack array of ``[headers, body]`` pairs, each exactly the headers
and body the line would have had as a message of its own (its request id, custom id,
reply subject, deadline and signed tenancy). A worker serves each line as it serves a
single request, replies per line, and acks the block once every line is settled.

A message without ``Pb-Lines`` is a single line (lines re-published by a repair, lines
too large to share a message, and messages from older batchers).
"""

from __future__ import annotations

import msgspec

H_LINES = "Pb-Lines"  # lines in a block message; absent on a single-line message
MAX_BLOCK_LINES = 256  # a worker refuses a block that declares more

LineEntry = tuple[dict[str, str], bytes]  # one line: its headers, its body

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[dict[str, str], bytes]])


def encode_block(lines: list[LineEntry]) -> bytes:
    return _encoder.encode(lines)


def decode_block(data: bytes) -> list[LineEntry]:
    """The block's lines; ``msgspec.DecodeError`` (or ``ValidationError``) when the body
    is not a block."""
    return _decoder.decode(data)


def entry_size(headers: dict[str, str], body: bytes) -> int:
    """An upper bound of what the line adds to an encoded block, in bytes."""
    return len(body) + sum(len(k) + len(v) + 10 for k, v in headers.items()) + 16


def declared_lines(headers: dict[str, str] | None) -> int:
    """How many lines a message carries by its header (1 for a single line), bounded."""
    declared = (headers or {}).get(H_LINES)
    if declared is None:
        return 1
    try:
        return min(max(int(declared), 1), MAX_BLOCK_LINES)
    except ValueError:
        return 1
