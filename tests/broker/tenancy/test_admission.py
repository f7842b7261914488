"""Admission's messages on their own: amounts of money are shown as configured."""

from __future__ import annotations

import pytest

from broker.tenancy.admission import rate_headers, usd
from broker.tenancy.ratelimit import Bucket, Decision


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(0.00005, "$0.00005"), (5, "$5.00"), (0.1234, "$0.1234"), (12.5, "$12.50"), (0, "$0.00")],
)
def test_budgets_are_not_rounded_away(amount: float, shown: str) -> None:
    assert usd(amount) == shown


def test_rate_headers_report_the_tightest_bucket_of_each_kind() -> None:
    key_rpm = Bucket("k.rpm", "requests", 60, 60)
    tenant_rpm = Bucket("t.rpm", "requests", 600, 600)
    key_tpm = Bucket("k.tpm", "tokens", 1000, 1000)
    tenant_tpm = Bucket("t.tpm", "tokens", 5000, 5000)
    headers = rate_headers(
        [
            Decision(key_rpm, True, 50, 10.0, 0.0),
            Decision(tenant_rpm, True, 20, 30.0, 0.0),  # fewer left: the tightest
            Decision(key_tpm, True, 900, 6.0, 0.0),
            Decision(tenant_tpm, True, 900, 7.5, 0.0),  # as many left, longer to reset
        ]
    )
    assert headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "20",
        "x-ratelimit-reset-requests": "30.000s",
        "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "7.500s",
    }
    assert rate_headers([]) == {}
