"""Where one request's time goes, step by step: python bench/trace.py [--rate 400].

Runs ``bench/overhead.py`` with the timestamp hooks of ``bench/tracehooks`` in its
ingress and worker processes, then joins their lines by request id and prints the p50
and p90 of each step of path (b) (HTTP -> ingress -> NATS -> worker -> HTTP upstream)
at the paced rate. Clocks are the same machine's. The hooks cost a few µs a step: read
the steps against each other, and compare commits with the same tool, not with
``bench/overhead.py``'s own figures. The p50s of the steps do not add up to the total's.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

STEPS = [
    ("ingress: request in -> publish", lambda i, w: i["publish"] - i["in"]),
    ("publish -> stored by JetStream", lambda i, w: w["stored"] - i["publish"]),
    ("stored -> the worker's handler starts", lambda i, w: w["start"] - w["stored"]),
    ("worker: handler -> upstream call", lambda i, w: w["upstream"] - w["start"]),
    ("upstream call", lambda i, w: w["answer"] - w["upstream"]),
    ("worker: answer -> reply published", lambda i, w: w["reply"] - w["answer"]),
    ("reply published -> the ingress has it", lambda i, w: i["reply"] - w["reply"]),
    ("ingress: reply -> handler done", lambda i, w: i["handled"] - i["reply"]),
    ("ingress: handler done -> response sent", lambda i, w: i["end"] - i["handled"]),
    ("worker: reply -> ack sent", lambda i, w: w["ack"] - w["reply"]),
    ("worker: ack sent -> confirmed, handler done", lambda i, w: w["end"] - w["ack"]),
    ("total in the ingress", lambda i, w: i["end"] - i["in"]),
]


def _read(directory: Path, role: str, fields: list[str]) -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = {}
    for path in directory.glob(f"{role}.*.tsv"):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == len(fields) + 1:
                rows[parts[0]] = dict(zip(fields, map(int, parts[1:]), strict=True))
    return rows


def report(directory: Path, rate: float) -> list[str]:
    ingress = _read(directory, "ingress", ["in", "publish", "reply", "handled", "end"])
    worker = _read(
        directory, "worker", ["stored", "start", "upstream", "answer", "reply", "ack", "end"]
    )
    # The paced phase of path (b): the longest run of seconds in which the ingress saw
    # about `rate` (a second where a closed loop began or ended may count as many).
    per_second = collections.Counter(row["in"] // 10**9 for row in ingress.values())
    near = sorted(s for s, n in per_second.items() if 0.9 * rate <= n <= 1.1 * rate)
    runs: list[list[int]] = []
    for second in near:
        if runs and second == runs[-1][-1] + 1:
            runs[-1].append(second)
        else:
            runs.append([second])
    paced = set(max(runs, key=len)) if runs else set()
    joined = [
        (row, worker[rid])
        for rid, row in ingress.items()
        if row["in"] // 10**9 in paced
        and rid in worker
        and all(row.values())
        and all(worker[rid].values())
    ]
    lines = [f"{len(joined)} requests at ~{rate:.0f} req/s, path (b)"]
    for name, step in STEPS:
        values = sorted(step(i, w) for i, w in joined)
        if values:
            p50, p90 = values[len(values) // 2], values[int(len(values) * 0.9)]
            lines.append(f"{name:<44} p50 {p50 / 1000:6.0f} µs   p90 {p90 / 1000:6.0f} µs")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promptbus-trace-") as directory:
        env = dict(os.environ)
        env["PROMPTBUS_TRACE_DIR"] = directory
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE / "tracehooks"), env.get("PYTHONPATH", "")) if p
        )
        command = [sys.executable, str(HERE / "overhead.py"), "--rate", str(args.rate)]
        command += ["--duration", str(args.duration)]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        print("\n".join(report(Path(directory), args.rate)))


if __name__ == "__main__":
    main()
