"""Fixed latency buckets: counts any process can add up and read percentiles from."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# upper bounds in milliseconds, fine where a gateway's and a mock's time lies and coarse
# where providers' does; one more bucket counts what is slower
BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


def bucket_of(ms: float, bounds: Sequence[float] = BUCKETS_MS) -> int:
    return bisect.bisect_left(bounds, ms)


def percentile(
    histogram: Sequence[int], q: float, bounds: Sequence[float] = BUCKETS_MS
) -> float | None:
    """The ``q`` quantile in milliseconds, interpolated within its bucket (the open last
    bucket reports its lower bound); None for no counts."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = bounds[index - 1] if index > 0 else 0.0
            if index >= len(bounds):
                return float(low)
            high = bounds[index]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(bounds[-1])
