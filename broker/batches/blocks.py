"""Packing a batch's lines into block messages (schemas/line_block.py) before they are
published: the lines of one publishing group that call the same model share messages,
at most ``lines_per_block(subject)`` lines and ``max_bytes`` each.

Packing is deterministic, the same group always gives the same blocks with the same
``Nats-Msg-Id`` (the first line's, with ``+<lines>``), so a group published again after a
restart or a timeout is dropped by JetStream's de-duplication as single lines were.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.nats.block_publish import Message
from schemas.config import ModelConfig
from schemas.envelope import H_MSG_ID
from schemas.line_block import H_LINES, LineEntry, encode_block, entry_size

Packed = tuple[list[int], Message]  # the line indices a message carries, the message


def lines_per_block(model: ModelConfig, most: int) -> int:
    """Lines a block of ``model`` carries: at most an eighth of what its deployments run
    at once, so that a block never holds most of a pool's slots and several workers
    share a batch; 1 (a message per line) for models that run few requests at once."""
    concurrency = sum(d.max_concurrency for d in model.deployments)
    return max(1, min(most, concurrency // 8))


def pack(
    group: list[tuple[int, Message]], lines_per_block: Callable[[str], int], max_bytes: int
) -> list[Packed]:
    """The group's messages, lines of the same subject packed together in their order.

    Entries with index -1 (a line's error result, published to the results stream) and
    lines of a subject that takes one line per block stay as they are."""
    out: list[Packed] = []
    open_blocks: dict[str, tuple[list[int], list[LineEntry], list[int]]] = {}

    def close(subject: str) -> None:
        indices, entries, _ = open_blocks.pop(subject)
        if len(entries) == 1:
            headers, body = entries[0]
            out.append((indices, (subject, body, headers)))
            return
        first_id = entries[0][0].pop(H_MSG_ID, "")
        for headers, _ in entries[1:]:
            headers.pop(H_MSG_ID, None)
        headers = {H_LINES: str(len(entries))}
        if first_id:
            headers[H_MSG_ID] = f"{first_id}+{len(entries)}"
        out.append((indices, (subject, encode_block(entries), headers)))

    for index, (subject, body, headers) in group:
        most = lines_per_block(subject) if index >= 0 else 1
        size = entry_size(headers, body)
        if most <= 1 or size > max_bytes:
            out.append(([index], (subject, body, headers)))
            continue
        current = open_blocks.get(subject)
        if current is not None and current[2][0] + size > max_bytes:
            close(subject)
            current = None
        if current is None:
            current = open_blocks[subject] = ([], [], [0])
        current[0].append(index)
        current[1].append((headers, body))
        current[2][0] += size
        if len(current[1]) >= most:
            close(subject)
    for subject in list(open_blocks):
        close(subject)
    return out
