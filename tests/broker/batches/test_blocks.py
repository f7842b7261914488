"""Packing a publishing group of lines into block messages: same model together, in
order, within the line and byte limits, deterministically (the same group gives the same
messages and de-duplication ids), error results and oversized lines left alone."""

from __future__ import annotations

import msgspec

from broker.batches.blocks import lines_per_block, pack
from broker.nats.block_publish import Message
from schemas.config import ModelConfig
from schemas.envelope import H_MSG_ID
from schemas.line_block import H_LINES, decode_block


def _line(index: int, subject: str = "pb.bulk.a", size: int = 10) -> tuple[int, Message]:
    headers = {H_MSG_ID: f"b1:c{index}", "Pb-Request-Id": f"b1-{index}"}
    return index, (subject, b"x" * size, headers)


def _group() -> list[tuple[int, Message]]:
    group = [_line(i, "pb.bulk.a" if i % 3 else "pb.bulk.b") for i in range(10)]
    group.insert(4, (-1, ("pb.results.b1", b"error", {H_MSG_ID: "b1:bad"})))
    return group


def test_lines_of_a_model_share_blocks_and_keep_their_headers() -> None:
    packed = pack(_group(), lambda subject: 4, 10_000)
    by_subject: dict[str, list[list[int]]] = {}
    for indices, (subject, body, headers) in packed:
        by_subject.setdefault(subject, []).append(indices)
        if H_LINES in headers:
            lines = decode_block(body)
            assert int(headers[H_LINES]) == len(lines) == len(indices) > 1
            assert [h["Pb-Request-Id"] for h, _ in lines] == [f"b1-{i}" for i in indices]
            assert all(H_MSG_ID not in h for h, _ in lines)  # the block has one
            assert headers[H_MSG_ID] == f"b1:c{indices[0]}+{len(indices)}"
        else:
            assert len(indices) == 1
    assert by_subject == {
        "pb.bulk.a": [[1, 2, 4, 5], [7, 8]],
        "pb.bulk.b": [[0, 3, 6, 9]],
        "pb.results.b1": [[-1]],  # an error result, as it was
    }


def test_packing_is_deterministic() -> None:
    first = pack(_group(), lambda subject: 4, 10_000)
    again = pack(_group(), lambda subject: 4, 10_000)
    assert first == again


def test_byte_budget_and_one_line_blocks() -> None:
    group = [_line(i, size=400) for i in range(6)]
    packed = pack(group, lambda subject: 32, 1_000)  # two 400-byte lines fit, not three
    assert [indices for indices, _ in packed] == [[0, 1], [2, 3], [4, 5]]
    too_big = [_line(0, size=2_000), _line(1), _line(2)]
    packed = pack(too_big, lambda subject: 32, 1_000)
    assert [indices for indices, _ in packed] == [[0], [1, 2]]
    assert H_LINES not in packed[0][1][2]  # a single line travels as it always did
    single = pack([_line(i) for i in range(3)], lambda subject: 1, 10_000)
    assert [m for _, m in single] == [m for _, m in [_line(i) for i in range(3)]]


def test_a_block_is_at_most_an_eighth_of_the_models_concurrency() -> None:
    def model(*concurrency: int) -> ModelConfig:
        deployments = [{"provider": "mock", "max_concurrency": c} for c in concurrency]
        raw = {"model_name": "m", "deployments": deployments}
        return msgspec.convert(raw, ModelConfig, strict=False)

    assert lines_per_block(model(256), 32) == 32
    assert lines_per_block(model(64, 64), 32) == 16
    assert lines_per_block(model(16), 32) == 2
    assert lines_per_block(model(10), 32) == 1  # few slots: a message per line
    assert lines_per_block(model(4096), 64) == 64
