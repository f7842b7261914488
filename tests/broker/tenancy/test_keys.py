"""The admission signature a worker trusts instead of admitting a request again: it
covers this very request, and the previous release's signature still verifies."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import cast

import msgspec
from nats.js.kv import KeyValue

from broker.tenancy.keys import KeyStore
from schemas.envelope import RequestMeta, Tenancy

BODY = b'{"model":"m","messages":[{"role":"user","content":"on the bus"}]}'


def _keys() -> KeyStore:
    keys = KeyStore(cast(KeyValue, None))  # signing needs only the shared secret
    keys.admission_secret = secrets.token_bytes(32)
    return keys


def _meta() -> RequestMeta:
    tenancy = Tenancy("key_1", "acme", 12, True, hold_cost=5, hold_tokens=300, team="t")
    return RequestMeta("req-1", "_INBOX.a.b", deadline_ms=2_000_000_000_000, tenancy=tenancy)


def test_a_signature_vouches_for_its_own_request_only() -> None:
    keys = _keys()
    meta = keys.vouch(_meta(), BODY)
    assert meta.tenancy is not None and len(meta.tenancy.signature) == 32
    assert keys.verify_tenancy(meta, BODY)
    same_size = BODY.replace(b"on the bus", b"on the BUS")
    assert not keys.verify_tenancy(meta, same_size)
    assert not keys.verify_tenancy(meta, BODY + b" ")
    assert not keys.verify_tenancy(msgspec.structs.replace(meta, reply_to="_INBOX.a.c"), BODY)
    assert not keys.verify_tenancy(msgspec.structs.replace(meta, deadline_ms=1), BODY)
    more = msgspec.structs.replace(meta.tenancy, hold_cost=0)
    assert not keys.verify_tenancy(msgspec.structs.replace(meta, tenancy=more), BODY)
    assert not _keys().verify_tenancy(meta, BODY)  # another deployment's secret


def test_the_previous_releases_hmac_still_verifies() -> None:
    """Workers upgraded before the ingresses take what the older ingresses admitted."""
    keys, meta = _keys(), _meta()
    tenancy = meta.tenancy
    assert tenancy is not None
    part = (
        f"req-1|key_1|acme|12|1|5|300|t||_INBOX.a.b|2000000000000"
        f"|{hashlib.sha256(BODY).hexdigest()[:32]}"
    )
    signature = hmac.new(keys.admission_secret, part.encode(), hashlib.sha256).hexdigest()[:32]
    signed = msgspec.structs.replace(tenancy, signature=signature)
    old = msgspec.structs.replace(meta, tenancy=signed)
    assert keys.verify_tenancy(old, BODY)
    assert not keys.verify_tenancy(old, BODY.replace(b"on the bus", b"on the BUS"))
