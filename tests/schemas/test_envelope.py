"""The request envelope's headers: what a worker reads back is what was sent."""

from __future__ import annotations

from schemas.envelope import H_METERED, Tenancy


def test_a_tenancy_survives_its_headers_and_its_settlement_is_signed() -> None:
    later = Tenancy("key_1", "acme", 12, True, hold_cost=5, hold_tokens=300, settle_later=True)
    now = Tenancy("key_1", "acme", 12, True, hold_cost=5, hold_tokens=300)
    plain = Tenancy("key_1", "acme", 12)
    for tenancy, value in ((later, "2"), (now, "1"), (plain, "0")):
        headers = tenancy.to_headers()
        assert headers[H_METERED] == value
        assert Tenancy.from_headers(headers) == tenancy
    parts = {t.signed_part("r1", "pb.1", 1_000, b"{}") for t in (later, now, plain)}
    assert len(parts) == 3  # a "settle now" cannot be turned into "later" unsigned
