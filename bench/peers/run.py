"""promptbus beside the gateways it is measured against: `make bench-peers`.

One cheap fixed-response upstream (nginx, else promptbus's mock upstream), and each
system pointed at it in turn: the upstream direct, promptbus unmetered, promptbus
metered (rpm, tpm and a daily budget on the key and its tenant), LiteLLM proxy (1
worker, no database, local cost map, no telemetry) and the Portkey gateway. Per system
and round: req/s closed-loop at c=64 (wrk when present), the CPU of all its processes
per request in that run, and p50/p99 paced at fixed rates. Rounds are interleaved (A B
C ... A B C ...); the table shows each figure's median over rounds and its spread.

A peer that cannot be installed is skipped, saying why. Installs are pinned and live in
``.promptbus/bench/`` (bench/peers/install.py), not in the project's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.overhead import BODY, Call, _bench_key, closed_loop, paced
from bench.peers import install
from broker.nats.embedded import EmbeddedNats, free_port
from cli import serve
from schemas.settings import load_config
from tests.procs import PROMPTBUS, Proc, wait_http, wait_port

ANSWER = msgspec.json.encode(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fixed answer"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).decode()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LITELLM_KEY = "sk-bench-master"


@dataclass
class Target:
    """A running system: where to post chat completions, and the processes it runs."""

    url: str
    pids: list[int]
    headers: dict[str, str] = field(default_factory=dict)
    model: str = "bench"


@dataclass
class Figures:
    rate: float  # req/s at c=64
    cpu_us: float  # CPU of the system's processes per request, in that run
    errors: int
    latency: dict[float, tuple[float, float]]  # paced rate -> (p50 ms, p99 ms)


# ---------------------------------------------------------------- processes


def _tree_cpu_s(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and all their descendants, in seconds."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        fields = stats[pid]
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        todo += children.get(pid, [])
    return total


@contextlib.contextmanager
def _procs() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def _pid(proc: Proc) -> int:
    return int(proc.popen.pid)


# ---------------------------------------------------------------- the upstream


@contextlib.contextmanager
def upstream(work: Path, latency_ms: int = 0) -> Iterator[tuple[str, list[int], str]]:
    """The fixed-response upstream's base URL (``.../v1``), its pids, and what it is.
    With ``latency_ms``, it answers after that long (nginx's ``echo_sleep``, a timer: a
    provider-bound load that costs the upstream no CPU while it waits)."""
    port = free_port()
    nginx = install.debian_tool("nginx")
    echo = install.nginx_echo_module() if nginx is not None and latency_ms else None
    with _procs() as procs:
        if nginx is not None and (echo is not None or not latency_ms):
            conf = work / "nginx.conf"
            quoted = ANSWER.replace("'", "\\'")
            answer = f"return 200 '{quoted}';"
            if echo is not None:
                answer = f"echo_sleep {latency_ms / 1000}; echo '{quoted}';"
            conf.write_text(
                f"""{f"load_module {echo};" if echo is not None else ""}
worker_processes 1;
daemon off;
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; {answer} }}
  }}
}}
"""
            )
            proc = Proc([nginx, "-c", str(conf), "-p", str(work)], work / "nginx.log")
            what = "nginx (1 worker, fixed chat.completion)"
        else:
            latency = ["--latency-ms", str(latency_ms)]
            proc = Proc(
                [*PROMPTBUS, "mock-upstream", "--port", str(port), *latency], work / "up.log"
            )
            what = "promptbus mock-upstream (nginx or its echo module not installable here)"
        if latency_ms:
            what += f", answering after {latency_ms} ms"
        procs.append(proc)
        wait_port("127.0.0.1", port, proc)
        yield f"http://127.0.0.1:{port}/v1", [_pid(proc)], what


# ---------------------------------------------------------------- the systems


@contextlib.contextmanager
def promptbus(work: Path, upstream_url: str, metered: bool, workers: int = 1) -> Iterator[Target]:
    """nats-server, ``workers`` worker processes and one ingress, as separate processes."""
    with EmbeddedNats(work / "nats", log_file=work / "nats.log") as nats, _procs() as procs:
        port = free_port()
        config = work / "promptbus.yaml"
        model = {
            "model_name": "bench",
            "deployments": [
                {"provider": "openai", "base_url": upstream_url, "max_concurrency": 256}
            ],
        }
        config.write_text(
            yaml.safe_dump(
                {
                    "nats": {"url": nats.url, "credentials_dir": nats.credentials_dir},
                    "auth": {"required": metered},
                    "model_list": [model],
                }
            )
        )
        started = [
            Proc([*PROMPTBUS, "worker", "-c", str(config)], work / f"worker-{index}.log")
            for index in range(workers)
        ]
        procs.extend(started)
        ingress = Proc(
            [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)], work / "ingress.log"
        )
        procs.append(ingress)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", ingress)
        time.sleep(1.0)  # worker presence
        headers = {}
        if metered:
            key = serve.run(_bench_key(load_config(config), nats.url))
            headers["authorization"] = f"Bearer {key}"
        server = nats.process
        pids = [*map(_pid, started), _pid(ingress)] + ([server.pid] if server is not None else [])
        yield Target(f"{base}/v1/chat/completions", pids, headers)


@contextlib.contextmanager
def litellm(work: Path, upstream_url: str, command: Path) -> Iterator[Target]:
    """LiteLLM proxy as its docs run it without a database: 1 worker, a master key."""
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "bench",
                        "litellm_params": {
                            "model": "openai/bench",
                            "api_base": upstream_url,
                            "api_key": "sk-bench",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "set_verbose": False},
                # a master key and no database: keys checked in memory, nothing logged
                "general_settings": {"master_key": LITELLM_KEY},
            }
        )
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no cost map download
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    with _procs() as procs:
        proc = Proc(
            [
                str(command),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            work / "litellm.log",
            env,
        )
        procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
        headers = {"authorization": f"Bearer {LITELLM_KEY}"}
        yield Target(f"http://127.0.0.1:{port}/v1/chat/completions", [_pid(proc)], headers)


@contextlib.contextmanager
def portkey(work: Path, upstream_url: str, script: Path) -> Iterator[Target]:
    """The Portkey gateway (Node), told per request which provider and host to call."""
    port = free_port()
    node = shutil.which("node") or "node"
    with _procs() as procs:
        proc = Proc([node, str(script), f"--port={port}"], work / "portkey.log")
        procs.append(proc)
        wait_port("127.0.0.1", port, proc)
        headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": upstream_url,
            "authorization": "Bearer sk-bench",
        }
        yield Target(f"http://127.0.0.1:{port}/v1/chat/completions", [_pid(proc)], headers)


# ---------------------------------------------------------------- load


def _wrk(target: Target, concurrency: int, duration: float, work: Path) -> tuple[int, int, float]:
    """(requests, non-2xx or socket errors, seconds) of a wrk closed loop."""
    wrk = install.debian_tool("wrk")
    assert wrk is not None
    script = work / "post.lua"
    body = msgspec.json.encode(BODY | {"model": target.model}).decode()
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body}]]"]
    headers = {"content-type": "application/json"} | target.headers
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [wrk, "-t2", f"-c{concurrency}", f"-d{duration:.0f}s", "-s", str(script), target.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = int(_found(r"(\d+) requests in", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in socket.groups()) if socket else 0
    seconds = float(_found(r"requests in ([\d.]+)s", out))
    return total, errors, seconds


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"wrk printed no {pattern!r}: {text[:300]}")
    return match.group(1)


def _call(session: aiohttp.ClientSession, target: Target) -> Call:
    payload = msgspec.json.encode(BODY | {"model": target.model})
    headers = {"content-type": "application/json"} | target.headers

    async def call() -> None:
        async with session.post(target.url, data=payload, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

    return call


async def _paced(
    target: Target, rates: list[float], duration: float
) -> dict[float, tuple[float, float]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        call = _call(session, target)
        await closed_loop("warm-up", call, 8, 1.0)
        found = {}
        for rate in rates:
            result = await paced(f"@{rate}", call, rate, duration)
            found[rate] = (result.pct(50), result.pct(99))
        return found


async def _closed(target: Target, concurrency: int, duration: float) -> tuple[int, int, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        result = await closed_loop("c", _call(session, target), concurrency, duration)
        return len(result.latencies), result.errors, result.elapsed


def measure(target: Target, args: argparse.Namespace, work: Path) -> Figures:
    latency = serve.run(_paced(target, args.rates, args.duration))
    before = _tree_cpu_s(target.pids)
    if install.debian_tool("wrk") is not None:
        total, errors, seconds = _wrk(target, args.concurrency, args.duration, work)
    else:
        total, errors, seconds = serve.run(_closed(target, args.concurrency, args.duration))
    cpu = _tree_cpu_s(target.pids) - before
    return Figures(total / seconds, cpu / max(total, 1) * 1e6, errors, latency)


# ---------------------------------------------------------------- the table


def _spread(values: list[float], unit: str = "") -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:,.0f}{unit}"
    return f"{middle:,.0f}{unit} ({min(values):,.0f}-{max(values):,.0f})"


def _spread_ms(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(results: dict[str, list[Figures]], rates: list[float], concurrency: int = 64) -> str:
    head = ["system", f"req/s c={concurrency}", "CPU µs/req", "non-2xx"]
    head += [f"p50 / p99 ms @{rate:.0f}/s" for rate in rates]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, figures in results.items():
        if not figures:
            continue
        cells = [
            name,
            _spread([f.rate for f in figures]),
            _spread([f.cpu_us for f in figures]),
            str(sum(f.errors for f in figures)),
        ]
        for rate in rates:
            p50 = _spread_ms([f.latency[rate][0] for f in figures])
            p99 = _spread_ms([f.latency[rate][1] for f in figures])
            cells.append(f"{p50} / {p99}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 400.0])
    parser.add_argument("--only", nargs="*", help="systems to run (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="promptbus worker processes")
    parser.add_argument(
        "--upstream-latency-ms",
        type=int,
        default=0,
        help="the upstream answers after this long (50 with --concurrency 256: provider-bound)",
    )
    args = parser.parse_args()

    litellm_command = install.litellm()
    portkey_script = install.portkey()
    skipped = {
        name: reason
        for name, reason in [
            ("LiteLLM proxy", litellm_command),
            ("Portkey gateway", portkey_script),
        ]
        if isinstance(reason, str)
    }
    work = Path(tempfile.mkdtemp(prefix="promptbus-peers-"))
    systems: dict[str, Callable[[Path, str], contextlib.AbstractContextManager[Target]]] = {
        "upstream direct": lambda w, u: contextlib.nullcontext(Target(f"{u}/chat/completions", [])),
        "promptbus": lambda w, u: promptbus(w, u, metered=False, workers=args.workers),
        "promptbus, metered": lambda w, u: promptbus(w, u, metered=True, workers=args.workers),
    }
    if not isinstance(litellm_command, str):
        systems[f"LiteLLM proxy {install.LITELLM_VERSION}"] = lambda w, u: litellm(
            w, u, litellm_command
        )
    if not isinstance(portkey_script, str):
        systems[f"Portkey gateway {install.PORTKEY_VERSION}"] = lambda w, u: portkey(
            w, u, portkey_script
        )
    if args.only:
        systems = {k: v for k, v in systems.items() if any(o in k for o in args.only)}
    results: dict[str, list[Figures]] = {name: [] for name in systems}
    with upstream(work, args.upstream_latency_ms) as (upstream_url, upstream_pids, what):
        for round_ in range(args.rounds):
            for name, start in systems.items():
                slug = re.sub(r"\W+", "-", name)
                run_dir = work / f"{round_}-{slug}"
                run_dir.mkdir()
                try:
                    with start(run_dir, upstream_url) as target:
                        if name == "upstream direct":
                            target.pids = upstream_pids
                        figures = measure(target, args, run_dir)
                except Exception as exc:  # one system failing does not end the others
                    print(f"round {round_ + 1}, {name}: failed: {exc} (logs in {run_dir})")
                    continue
                results[name].append(figures)
                print(
                    f"round {round_ + 1}, {name}: {figures.rate:,.0f} req/s, "
                    f"{figures.cpu_us:,.0f} µs CPU/req, {figures.errors} errors",
                    flush=True,
                )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\n{time.strftime('%Y-%m-%d')}, commit {commit}, {args.rounds} rounds interleaved, "
        f"{args.duration:.0f} s per run, upstream: {what}; load: "
        f"{'wrk' if install.debian_tool('wrk') else 'aiohttp'} at c={args.concurrency}, "
        "aiohttp paced (open loop) at the fixed rates; median (min-max)\n"
    )
    print(table(results, args.rates, args.concurrency))
    for name, reason in skipped.items():
        print(f"\nskipped {name}: {reason}")


if __name__ == "__main__":
    main()
