"""broker/nats/headers.py: the header block is byte for byte nats-py's, and is read back
as nats-py reads it."""

from __future__ import annotations

import re
import uuid
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.errors import BadHeaderError

from broker.nats.connection import GuardedNATS, connect
from broker.nats.credentials import Role
from broker.nats.headers import decode_headers, encode_headers
from tests import bus

_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def nats_py_block(headers: dict[str, str]) -> bytes:
    """nats-py 2.x's own loop (Client._send_publish), the oracle."""
    hdr = bytearray(b"NATS/1.0\r\n")
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if not _KEY.fullmatch(key):
            raise BadHeaderError(key)
        hdr.extend(key.encode() + b": " + v.strip().translate(_NEWLINES).encode() + b"\r\n")
    hdr.extend(b"\r\n")
    return bytes(hdr)


tokens = st.text(alphabet="abcXYZ-_.019!#", min_size=1, max_size=12)
keys = tokens | st.sampled_from(["", " ", " Pb-Kind ", "Pb-Status"])
values = st.text(max_size=30) | st.sampled_from(["a\r\nInjected: 1", " padded ", "\n", "é✓"])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # a loaded CI box
@given(st.dictionaries(keys, values, max_size=8))
def test_the_block_is_nats_py_s(headers: dict[str, str]) -> None:
    assert encode_headers(headers) == nats_py_block(headers)
    assert encode_headers(headers) == nats_py_block(headers)  # with its keys remembered


# What nats-py's reader could meet: every white space str.strip() knows, colons, empty
# and unterminated lines, bytes that are not UTF-8, names that are not ASCII.
_piece = st.sampled_from(
    [
        b"Pb-Kind",
        b"a",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\x1c",
        b"\xc2\xa0",
        b"\xc3",
        b"\xe9",
        b"\r",
        b"\n",
        b"\r\n",
        b"x y",
        b"\xd0\xba",
        b"value",
        b"\x00",
        b"\xef\xbf\xbd",
    ]
)
_lines = st.lists(st.binary(max_size=6) | _piece, max_size=12).map(b"".join)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(keys, values, max_size=8))
def test_a_block_we_send_reads_back_as_nats_py_reads_it(headers: dict[str, str]) -> None:
    raw = encode_headers(headers)[len(b"NATS/1.0\r\n") :]
    expected = NATS._parse_header_lines(raw)
    with mock.patch.object(NATS, "_parse_header_lines", side_effect=AssertionError):
        assert decode_headers(raw) == expected  # and without asking nats-py


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_lines, max_size=6).map(b"\r\n".join), st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
def test_any_block_reads_as_nats_py_reads_it(block: bytes, end: bytes) -> None:
    raw = block + end
    assert decode_headers(raw) == NATS._parse_header_lines(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Pb-Kind: response\r\nPb-Status: 200\r\n\r\n",  # the canonical form
        b"Pb-Kind: \r\n\r\n",  # an empty value
        b"\r\n",  # no headers
        b"Pb-Kind:response\r\n\r\n",  # no space
        b"Pb-Kind: a \r\n\r\n",  # a value to strip
        b"Pb-Kind: a\x1c\r\n\r\n",  # white space to str.strip(), not to bytes.strip()
        b"a:b: c\r\n\r\n",  # the name ends at the first colon
        b"Pb Kind: a\r\n\r\n",  # a name with a space is dropped
        b"Pb-\xd0\xba: a\r\n\r\n",  # a name that is not ASCII is dropped
        b"Pb-Kind: \xc3(\r\n\r\n",  # a value that is not UTF-8
        b"Pb-Kind: a\r\n\r\nPb-Status: 1\r\n\r\n",  # a blank line inside
        b"Pb-Kind: a\rb\r\n\r\n",  # a lone CR in a value
    ],
)
def test_each_form_reads_as_nats_py_reads_it(raw: bytes) -> None:
    assert decode_headers(raw) == NATS._parse_header_lines(raw)


@pytest.mark.parametrize("key", ["bad key", "a:b", "ключ", "tab\tkey"])
def test_a_key_that_is_not_a_token_is_refused_every_time(key: str) -> None:
    for _ in range(2):
        with pytest.raises(BadHeaderError):
            encode_headers({"Pb-Kind": "response", key: "v"})


async def test_headers_arrive_as_sent(nats_url: str) -> None:
    """Through a real server (our connection sends, nats-py's parser reads)."""
    sent = {
        "Pb-Kind": "response",
        "Pb-Custom-Id": " cmVx ",
        "Pb-Note": "line\r\nNats-Msg-Id: forged",
        "Pb-Name": "café",
    }
    nc = await connect(nats_url, "headers-test", bus.CREDENTIALS.login(Role.ADMIN))
    assert isinstance(nc, GuardedNATS)  # the publish under test
    try:
        subject = f"headers.{uuid.uuid4().hex}"
        sub = await nc.subscribe(subject)
        await nc.publish(subject, b"body", headers=sent)
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"body"
        assert msg.headers == {
            "Pb-Kind": "response",
            "Pb-Custom-Id": "cmVx",
            "Pb-Note": "line  Nats-Msg-Id: forged",
            "Pb-Name": "café",
        }
    finally:
        await nc.close()
