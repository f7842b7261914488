"""The dashboard page's own arithmetic, run in Node.js (the browser test needs Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.procs import ROOT

PAGE = ROOT / "ingress" / "static" / "dashboard.html"


def _run(pattern: str, call: str) -> object:
    """The page's source matching ``pattern``, then ``call``, in Node: what it prints."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    source = re.search(pattern, PAGE.read_text(), re.DOTALL)
    assert source is not None
    script = source.group() + f"console.log(JSON.stringify({call}));"
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _percentile(buckets: list[tuple[float, int]], q: float) -> float | None:
    value = _run(r"function percentile\(.*?\n}\n", f"percentile({json.dumps(buckets)}, {q})")
    return None if value is None else float(value)  # type: ignore[arg-type]


def test_quantiles_are_interpolated_inside_their_bucket() -> None:
    """100 requests, all between 20 and 30 ms: p50 is 25 ms, not the bucket's edge."""
    buckets = [(0.01, 0), (0.02, 0), (0.03, 100), (1e9, 100)]
    assert _percentile(buckets, 0.5) == pytest.approx(0.025)
    assert _percentile(buckets, 0.99) == pytest.approx(0.0299)
    spread = [(0.001, 10), (0.002, 60), (0.005, 90), (1e9, 100)]
    assert _percentile(spread, 0.5) == pytest.approx(0.0018)
    assert _percentile(spread, 0.95) == pytest.approx(0.005)  # in +Inf: the last bound
    assert _percentile([(0.01, 0), (1e9, 0)], 0.5) is None


def test_deployment_rates_come_from_heartbeat_times() -> None:
    """Polls and heartbeats are both every 2 s: a poll that sees no new beat keeps the
    last rate instead of showing 0, and the rate divides by the beats' own times."""
    polls = [
        {"deployment": "d", "as_of": 100.0, "requests": 0},
        {"deployment": "d", "as_of": 102.0, "requests": 20},  # 10/s
        {"deployment": "d", "as_of": 102.0, "requests": 20},  # no new beat: still 10/s
        {"deployment": "d", "as_of": 105.0, "requests": 35},  # 5/s over 3 s
        {"deployment": "d", "as_of": 107.0, "requests": 3},  # a worker restarted: not < 0
        {"deployment": "e", "as_of": None, "requests": 0},  # no live worker
    ]
    rates = _run(
        r"const beats = new Map\(\);.*?\n}\n",
        f"{json.dumps(polls)}.map(deploymentRate)",
    )
    assert rates == ["—", "10.0", "10.0", "5.0", "0.0", "—"]
