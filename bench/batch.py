"""Bulk batch throughput and memory: python bench/batch.py [--lines 100000].

Starts a real nats-server, one worker process (the in-process mock provider, 0 ms) and
the batcher, then times ``promptbus batch submit FILE --model M -o OUT`` (a process of
its own) from start to the last result written. Every process's peak RSS (VmHWM) is
sampled from /proc while it runs. Run it with ``--lines 1000000`` too: peak RSS should
not grow with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.nats.embedded import EmbeddedNats
from tests.procs import PROMPTBUS, ROOT, Proc

MODEL = "bench-gpt"


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakWatcher:
    """Samples VmHWM of named processes until stopped (the last sample is the peak)."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.pids.items()):
                value = peak_rss_mb(pid)
                if value is not None:
                    self.peaks[name] = max(self.peaks.get(name, 0.0), value)
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    self.cpu[name] = cpu
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Milestones:
    """When the CLI's stderr first showed each stage: upload done, each batch status in
    its progress line, the first line done, the output written."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.text: list[str] = []
        self.seen: dict[str, float] = {}

    def _note(self, stage: str) -> None:
        self.seen.setdefault(stage, time.perf_counter() - self.started)

    def read(self, stream: IO[str]) -> None:
        line = ""
        while chunk := stream.read(1):
            self.text.append(chunk)
            if chunk not in "\r\n":
                line += chunk
                continue
            if line.startswith("uploaded"):
                self._note("uploaded")
            elif line.startswith("["):
                self._note(line.rstrip().rsplit(" ", 1)[-1])
                if not line.split("] ", 1)[1].startswith("0/"):
                    self._note("first done")
            elif line.startswith("wrote"):
                self._note("written")
            line = ""

    def summary(self) -> str:
        return ", ".join(f"{stage} {at:.2f}" for stage, at in self.seen.items())


def write_prompts(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for i in range(lines):
            line = {
                "custom_id": f"r{i}",
                "messages": [{"role": "user", "content": f"benchmark prompt number {i}"}],
                "max_tokens": 16,
            }
            out.write(json.dumps(line) + "\n")


def run_once(work: Path, config: Path, lines: int, watcher: PeakWatcher) -> tuple[float, int]:
    prompts = work / f"prompts-{lines}.jsonl"
    write_prompts(prompts, lines)
    output = work / f"results-{lines}.jsonl"
    started = time.perf_counter()
    submit = subprocess.Popen(
        [*PROMPTBUS, "--log-level", "WARNING", "batch", "-c", str(config), "submit",
         str(prompts), "--model", MODEL, "-o", str(output)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    watcher.pids["submit (CLI)"] = submit.pid
    assert submit.stderr is not None
    milestones = Milestones(started)
    reader = threading.Thread(target=milestones.read, args=(submit.stderr,), daemon=True)
    reader.start()
    out = submit.stdout.read() if submit.stdout else ""
    submit.wait()
    elapsed = time.perf_counter() - started
    reader.join()
    err = "".join(milestones.text)
    print("timeline (s from submit):", milestones.summary())
    if submit.returncode != 0:
        raise SystemExit(f"submit failed:\n{out}\n{err}")
    with output.open("rb") as results:
        count = sum(1 for _ in results)
    batch_id = out.split()[1]
    status = subprocess.run(
        [*PROMPTBUS, "batch", "-c", str(config), "status", batch_id],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    batch = json.loads(status.stdout)
    phases = [
        ("validating", "created_at", "in_progress_at"),
        ("in progress", "in_progress_at", "finalizing_at"),
        ("finalizing", "finalizing_at", "completed_at"),
    ]
    print(
        "phases (1 s resolution):",
        ", ".join(f"{name} {batch[end] - batch[start]} s" for name, start, end in phases),
    )
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=256, help="mock deployment slots")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-batch-bench-") as tmp:
        work = Path(tmp)
        nats = EmbeddedNats(work / "nats", log_file=work / "nats.log").start()
        config = work / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "nats": {
                        "url": nats.url,
                        "credentials_dir": nats.credentials_dir,
                        "max_queued_requests": 2_000_000,
                    },
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "deployments": [
                                {"provider": "mock", "max_concurrency": args.concurrency}
                            ],
                        }
                    ],
                }
            )
        )
        quiet = ["--log-level", "WARNING"]
        workers = [
            Proc([*PROMPTBUS, *quiet, "worker", "-c", str(config)], work / f"worker{i}.log")
            for i in range(args.workers)
        ]
        batcher = Proc(
            [
                *(os.environ["PB_PROFILE"].split() if "PB_PROFILE" in os.environ else PROMPTBUS),
                *quiet,
                "batcher",
                "-c",
                str(config),
            ],
            work / "batcher.log",
        )
        watcher = PeakWatcher()
        assert nats.process is not None
        watcher.pids.update(
            {
                "nats-server": nats.process.pid,
                **{f"worker{i}": w.popen.pid for i, w in enumerate(workers)},
                "batcher": batcher.popen.pid,
            }
        )
        watcher.start()
        try:
            time.sleep(2.0)  # worker presence and consumers
            elapsed, count = run_once(work, config, args.lines, watcher)
            print(
                f"{args.lines:,} lines: {count:,} results in {elapsed:.1f} s "
                f"= {count / elapsed:,.0f} req/s end to end (submit to last result)"
            )
            time.sleep(0.3)  # a last sample
            print("peak RSS:", ", ".join(f"{k} {v:.0f} MB" for k, v in watcher.peaks.items()))
            print("CPU time:", ", ".join(f"{k} {v:.1f} s" for k, v in watcher.cpu.items()))
        finally:
            watcher.stop()
            batcher.stop()
            for worker in workers:
                worker.stop()
            nats.stop()


if __name__ == "__main__":
    main()
