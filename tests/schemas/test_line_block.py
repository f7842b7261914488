"""The block wire format: lines round-trip exactly, and a block's declared size is
bounded whatever its header says."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.line_block import (
    H_LINES,
    MAX_BLOCK_LINES,
    declared_lines,
    decode_block,
    encode_block,
    entry_size,
)

_headers = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=6)
_lines = st.lists(st.tuples(_headers, st.binary(max_size=200)), max_size=20)


@given(_lines)
def test_lines_round_trip_and_fit_their_size_bound(
    lines: list[tuple[dict[str, str], bytes]],
) -> None:
    encoded = encode_block(lines)
    assert decode_block(encoded) == lines
    # entry_size over-counts (UTF-8 keys and values may be longer than their length)
    ascii_lines = [
        (h, b) for h, b in lines if all(k.isascii() and v.isascii() for k, v in h.items())
    ]
    assert len(encode_block(ascii_lines)) <= 16 + sum(entry_size(h, b) for h, b in ascii_lines)


@pytest.mark.parametrize("data", [b"", b"\x01", msgspec.msgpack.encode({"a": 1}), b"[1,2]"])
def test_what_is_not_a_block_fails_to_decode(data: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_block(data)


@pytest.mark.parametrize(
    ("headers", "lines"),
    [
        (None, 1),
        ({}, 1),
        ({H_LINES: "7"}, 7),
        ({H_LINES: "0"}, 1),
        ({H_LINES: "-5"}, 1),
        ({H_LINES: "lots"}, 1),
        ({H_LINES: str(10**9)}, MAX_BLOCK_LINES),
    ],
)
def test_declared_lines_are_bounded(headers: dict[str, str] | None, lines: int) -> None:
    assert declared_lines(headers) == lines
