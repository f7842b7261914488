"""broker/nats/headers.py: the header block is byte for byte nats-py's."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.errors import BadHeaderError

from broker.nats.connection import GuardedNATS, connect
from broker.nats.credentials import Role
from broker.nats.headers import encode_headers
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
