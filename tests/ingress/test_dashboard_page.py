"""The dashboard page's own arithmetic, run in Node.js (the browser test needs Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.procs import ROOT

PAGE = ROOT / "ingress" / "static" / "dashboard.html"


def _percentile(buckets: list[tuple[float, int]], q: float) -> float | None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    source = re.search(r"function percentile\(.*?\n}\n", PAGE.read_text(), re.DOTALL)
    assert source is not None
    script = (
        source.group() + f"console.log(JSON.stringify(percentile({json.dumps(buckets)}, {q})));"
    )
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)
    return None if value is None else float(value)


def test_quantiles_are_interpolated_inside_their_bucket() -> None:
    """100 requests, all between 20 and 30 ms: p50 is 25 ms, not the bucket's edge."""
    buckets = [(0.01, 0), (0.02, 0), (0.03, 100), (1e9, 100)]
    assert _percentile(buckets, 0.5) == pytest.approx(0.025)
    assert _percentile(buckets, 0.99) == pytest.approx(0.0299)
    spread = [(0.001, 10), (0.002, 60), (0.005, 90), (1e9, 100)]
    assert _percentile(spread, 0.5) == pytest.approx(0.0018)
    assert _percentile(spread, 0.95) == pytest.approx(0.005)  # in +Inf: the last bound
    assert _percentile([(0.01, 0), (1e9, 0)], 0.5) is None
