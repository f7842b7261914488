"""The ``promptbus`` command line: up, nats, worker, ingress, mock-upstream, chat."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from broker.nats.embedded import EmbeddedNats
from broker.nats.subjects import Subjects
from broker.observability import logs
from cli.options import api_key_option, connection_options, resolve_api_key
from cli.serve import collect_less, http_server, run, serve_until, shared_socket, stop_event
from schemas.config import Config
from schemas.settings import ConfigError, load_config

log = logging.getLogger("promptbus")


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"promptbus: {exc}") from None


def _nats_url(args: argparse.Namespace, config: Config) -> str:
    return args.nats_url or config.nats.url or f"nats://{config.nats.host}:{config.nats.port}"


def _start_embedded(config: Config) -> EmbeddedNats:
    store = Path(config.nats.store_dir)
    server = EmbeddedNats(
        store,
        host=config.nats.host,
        port=config.nats.port,
        log_file=store.parent / "nats-server.log",
        memory_limit_mb=config.nats.memory_limit_mb,
        cores=config.nats.server_cores,
        max_payload=config.nats.max_payload_bytes,
        auth=config.nats.auth,
        credentials_dir=config.nats.credentials_dir,
        brokers=[Subjects.of(config)],
        tls=config.nats.tls,
    )
    try:
        return server.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        raise SystemExit(f"promptbus: cannot start embedded nats-server: {exc}") from None


def _demo_key_file(config: Config) -> Path:
    """Where ``promptbus up`` keeps the demo key it prints (beside the NATS store)."""
    return Path(config.nats.store_dir).parent / "demo-key"


def _ingress_protocol(config: Config) -> Any:
    from ingress.connections import bounded_protocol

    return bounded_protocol(config.ingress.header_timeout_s, config.ingress.max_connections)


def _hello_body(model: str) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})


# ---------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> None:
    """Embedded nats-server (unless nats.url/--nats-url is set), a worker, the ingress."""
    config = _config(args)
    embedded = None if (args.nats_url or config.nats.url) else _start_embedded(config)
    url = embedded.url if embedded else _nats_url(args, config)
    try:
        run(_up(config, url, args.port or config.ingress.port))
    finally:
        if embedded:
            embedded.stop()
            print("promptbus: stopped", file=sys.stderr)


async def _up(config: Config, url: str, port: int) -> None:
    from broker.batches.batcher import Batcher
    from ingress.app import create_app
    from workers.worker import Worker

    stop = stop_event()
    worker = Worker(config)
    await worker.start(url)
    batcher = Batcher(config)
    await batcher.start(url)
    try:
        # A local all-in-one gets an admin key of its own unless one is set.
        admin_key = os.environ.setdefault(config.admin.api_key_env, secrets.token_urlsafe(18))
        server = http_server(
            create_app(config, nats_url=url), config.ingress.host, port, _ingress_protocol(config)
        )
        model = config.model_list[0].model_name
        base = f"http://{config.ingress.host}:{port}"
        auth = demo = ""
        if config.auth.required:  # a ready key for the demo tenant, kept between runs
            demo = await _demo_key(config, url)
            auth = f"-H 'Authorization: Bearer {demo}' "
        print(
            f"promptbus is up: NATS {url}, ingress {base}\n"
            + (f"demo API key (tenant demo): {demo}\n" if demo else "")
            + f"try:\n  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' "
            f"{auth}-d '{_hello_body(model)}'\n"
            f"dashboard: {base}/admin/dashboard#key={admin_key}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        await serve_until(server, stop)
    finally:
        await batcher.stop()
        await worker.stop(grace=5)


async def _demo_key(config: Config, url: str) -> str:
    from broker.nats.connection import connect
    from broker.nats.credentials import Role, login_for
    from cli.tenancy import demo_key

    nc = await connect(url, "promptbus-up", login_for(config, Role.ADMIN))
    try:
        return await demo_key(config, nc, _demo_key_file(config))
    finally:
        await nc.close()


def cmd_nats(args: argparse.Namespace) -> None:
    config = _config(args)
    server = _start_embedded(config)
    print(
        f"nats-server listening on {server.url} (store {config.nats.store_dir}); Ctrl-C stops it",
        flush=True,
    )

    async def wait() -> None:
        await stop_event().wait()

    try:
        run(wait())
    finally:
        server.stop()


def cmd_credentials(args: argparse.Namespace) -> None:
    """Generate the NATS credentials (kept if present) and the server config that requires
    them: for servers promptbus does not start itself (compose, your own)."""
    from broker.nats.credentials import Credentials
    from broker.nats.server_config import write_server_config

    config = _config(args)
    credentials = Credentials.create(config.nats.credentials_dir)
    conf = write_server_config(
        Path(args.server_config_dir or config.nats.credentials_dir),
        config.nats.max_payload_bytes,
        credentials,
        [Subjects.of(config)],
        config.nats.tls,
    )
    if args.world_readable_config:  # a server container running as another user
        conf.chmod(0o644)
    print(f"credentials in {credentials.directory}; nats-server config {conf}", flush=True)


def cmd_worker(args: argparse.Namespace) -> None:
    config = _config(args)
    if args.metrics_port is not None:
        config.worker.metrics_port = args.metrics_port
    run(_worker(config, _nats_url(args, config), args.model))


async def _worker(config: Config, url: str, models: list[str] | None) -> None:
    from workers.worker import Worker

    stop = stop_event()
    try:
        worker = Worker(config, models)
        await worker.start(url)
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"promptbus worker: {exc}") from None
    print(
        f"worker {worker.worker_id} serving "
        f"{', '.join(m.model_name for m in worker.models)} from {url}",
        flush=True,
    )
    await stop.wait()
    await worker.stop()


def cmd_batcher(args: argparse.Namespace) -> None:
    config = _config(args)
    run(_batcher(config, _nats_url(args, config)))


async def _batcher(config: Config, url: str) -> None:
    from broker.batches.batcher import Batcher

    stop = stop_event()
    batcher = Batcher(config)
    await batcher.start(url)
    print(f"batcher running batches from {url}", flush=True)
    await stop.wait()
    await batcher.stop()


def cmd_batch(args: argparse.Namespace) -> None:
    """The ``batch`` subcommands, each a short-lived NATS client."""
    from cli import batch
    from schemas.errors import BrokerError

    config = _config(args)
    url = _nats_url(args, config)
    action = args.batch_command
    output = Path(args.output) if getattr(args, "output", None) else None
    calls = {
        "submit": lambda: batch.submit(
            config,
            url,
            Path(args.file),
            args.model,
            args.wait,
            output,
            resolve_api_key(getattr(args, "api_key", None), _demo_key_file(config)),
        ),
        "status": lambda: batch.status(config, url, args.batch_id),
        "list": lambda: batch.list_batches(config, url, args.limit),
        "cancel": lambda: batch.cancel(config, url, args.batch_id),
        "results": lambda: batch.results(
            config, url, args.batch_id, output or Path(f"{args.batch_id}.jsonl"), args.wait
        ),
    }
    try:
        run(calls[action]())
    except BrokerError as exc:
        raise SystemExit(f"promptbus batch: {exc.message}") from None


def cmd_ingress(args: argparse.Namespace) -> None:
    from ingress.app import create_app

    config = _config(args)
    url = _nats_url(args, config)
    port = args.port if args.port is not None else config.ingress.port
    host = args.host or config.ingress.host

    async def serve() -> None:
        stop = stop_event()
        server = http_server(
            create_app(config, nats_url=url), host, port, _ingress_protocol(config)
        )
        sockets = [shared_socket(host, port)] if args.reuse_port else None

        async def announce() -> None:  # once started: replicas on one port are told apart
            while not server.started:  # noqa: ASYNC110 (a uvicorn flag, no event)
                await asyncio.sleep(0.05)
            print(f"ingress on http://{host}:{port} using NATS {url}", flush=True)

        announcing = asyncio.create_task(announce())
        try:
            await serve_until(server, stop, sockets)
        finally:
            announcing.cancel()

    run(serve())


def cmd_mock_upstream(args: argparse.Namespace) -> None:
    from workers.mock.upstream import MockSettings, MockUpstream

    settings = MockSettings(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        chunk_delay_ms=args.chunk_delay_ms,
        api_key=args.api_key,
    )

    async def serve() -> None:
        stop = stop_event()
        server = http_server(MockUpstream(settings), args.host, args.port)
        print(f"mock upstream on http://{args.host}:{args.port}/v1", flush=True)
        await serve_until(server, stop)

    run(serve())


def cmd_chat(args: argparse.Namespace) -> None:
    config = _config(args)
    model = args.model or config.model_list[0].model_name
    url = _nats_url(args, config)
    api_key = resolve_api_key(args.api_key, _demo_key_file(config))
    run(_chat(config, url, model, args.prompt, args.stream, args.timeout, api_key))


async def _chat(
    config: Config,
    url: str,
    model: str,
    prompt: str,
    stream: bool,
    timeout: float,
    api_key: str | None,
) -> None:
    from broker.client import BrokerClient
    from schemas.errors import BrokerError

    request = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    client = await BrokerClient.connect(config, url, name="promptbus-chat", api_key=api_key)
    try:
        if stream:
            async for chunk in client.chat_stream(request, timeout=timeout):
                for choice in chunk.choices:
                    print(choice.delta.content or "", end="", flush=True)
            print()
        else:
            completion = await client.chat(request, timeout=timeout)
            print(completion.choices[0].message.content)
    except BrokerError as exc:
        raise SystemExit(f"error {exc.status} ({exc.detail.code}): {exc.message}") from None
    finally:
        await client.close()


def cmd_tenancy(args: argparse.Namespace) -> None:
    """keys / tenants / usage (cli/tenancy.py), experiments (cli/experiments.py), alerts
    (cli/alerts.py)."""
    config = _config(args)
    run(args.action(args, config, _nats_url(args, config)))


def cmd_cluster(args: argparse.Namespace) -> None:
    """``make cluster``: the compose.yaml topology as local processes (broker/nats/cluster.py)."""
    from broker.nats.cluster import LocalCluster

    config_path = args.config or "deploy/cluster.yaml"
    cluster = LocalCluster(config_path, Path(args.store), ingress_port=args.port)

    async def wait() -> None:
        await stop_event().wait()

    try:
        cluster.start()
        print(cluster.describe(), flush=True)
        run(wait())
    finally:
        cluster.stop()
        print("promptbus cluster: stopped", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> None:
    from cli.status import show

    config = _config(args)
    run(show(config, _nats_url(args, config), args.watch))


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptbus", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    parser.add_argument(
        "--log-format", choices=["json", "text"], default="json", help="log lines (default json)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: object, help: str, *, nats: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        connection_options(sub, nats=nats)
        return sub

    up = add("up", cmd_up, "all-in-one: embedded nats-server, a worker and the ingress")
    up.add_argument("--port", type=int, default=None, help="ingress port")
    add("nats", cmd_nats, "run only the embedded nats-server", nats=False)
    creds = add(
        "credentials",
        cmd_credentials,
        "generate NATS logins and the nats-server config requiring them",
        nats=False,
    )
    creds.add_argument("--server-config-dir", default=None, help="where to write nats-server.conf")
    creds.add_argument(
        "--world-readable-config",
        action="store_true",
        help="mode 644 for nats-server.conf (it holds public keys only)",
    )
    worker = add("worker", cmd_worker, "run a worker pool")
    worker.add_argument("--model", action="append", help="serve only this model (repeatable)")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    ingress = add("ingress", cmd_ingress, "run the HTTP ingress")
    ingress.add_argument("--host", default=None)
    ingress.add_argument("--port", type=int, default=None)
    ingress.add_argument(
        "--reuse-port", action="store_true", help="share the port with other ingresses"
    )
    mock = commands.add_parser("mock-upstream", help="a fake OpenAI-compatible HTTP server")
    mock.set_defaults(func=cmd_mock_upstream)
    mock.add_argument("--host", default="127.0.0.1", help="address to listen on")
    mock.add_argument("--port", type=int, default=9090, help="port to listen on")
    mock.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before each answer (default 0)"
    )
    mock.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests answered with an error"
    )
    mock.add_argument(
        "--error-status", type=int, default=500, help="the HTTP status of those errors"
    )
    mock.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks"
    )
    mock.add_argument("--api-key", default=None, help="require this bearer key")
    chat = add("chat", cmd_chat, "send one chat request over NATS and print the answer")
    chat.add_argument("prompt")
    chat.add_argument("--model", "-m", default=None)
    chat.add_argument("--stream", action="store_true")
    chat.add_argument("--timeout", type=float, default=60.0)
    api_key_option(chat)
    from cli import tenancy

    tenancy.add_commands(lambda name, _, help: add(name, cmd_tenancy, help))
    from cli import experiments

    experiments.add_commands(lambda name, _, help: add(name, cmd_tenancy, help))
    from cli import alerts

    alerts.add_commands(lambda name, _, help: add(name, cmd_tenancy, help))
    add("batcher", cmd_batcher, "run batches: validate, publish lines, write output files")
    batch = add("batch", cmd_batch, "bulk batches from a JSONL file")
    actions = batch.add_subparsers(dest="batch_command", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        connection_options(parser, leaf=True)
        return parser

    submit = action("submit", "upload a JSONL file and start (or resume) it")
    submit.add_argument("file")
    submit.add_argument("--model", "-m", default=None, help="model for lines that name none")
    submit.add_argument("--wait", action="store_true", help="show progress until it ends")
    submit.add_argument(
        "--output",
        "-o",
        default=None,
        help="write the results here (out.jsonl: errors to out.errors.jsonl)",
    )
    api_key_option(submit, leaf=True)
    for name, text in (("status", "the batch object"), ("cancel", "cancel a batch")):
        action(name, text).add_argument("batch_id")
    listing = action("list", "recent batches")
    listing.add_argument("--limit", type=int, default=20)
    fetch = action("results", "download the output (and error) file")
    fetch.add_argument("batch_id")
    fetch.add_argument("--output", "-o", default=None, help="default <batch-id>.jsonl")
    fetch.add_argument("--wait", action="store_true", help="wait for the batch to end")
    cluster = add(
        "cluster", cmd_cluster, "local R3 cluster: 3 nats-servers, workers, 2 ingresses", nats=False
    )
    cluster.add_argument("--port", type=int, default=8080, help="the ingresses' shared port")
    cluster.add_argument("--store", default=".promptbus/cluster", help="stores and logs")
    status = add("status", cmd_status, "deployments, breakers and queues as a table")
    status.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="refresh")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    collect_less()
    logs.configure(args.log_level, args.log_format)
    try:
        args.func(args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
