"""Running long-lived components until SIGINT/SIGTERM, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")

# The cyclic collector's thresholds in broker processes. Python's default (700, 10, 10)
# runs a young collection every 700 allocations net, several per request here; the
# request path makes little cyclic garbage, so every 10,000 is enough, and cut the
# ingress's and the worker's CPU per request 6-10% (docs/performance.md, 2026-12-03).
GC_THRESHOLDS = (10_000, 20, 10)


def collect_less() -> None:
    """Set ``GC_THRESHOLDS``: once, at a broker process's start."""
    gc.set_threshold(*GC_THRESHOLDS)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the caller decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def http_server(app: Any, host: str, port: int, protocol: Any = "httptools") -> QuietServer:
    """``protocol``: uvicorn's name or class of the HTTP protocol (the ingress passes one
    with a header timeout and a connection cap, ingress/connections.py)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the running loop (uvloop when installed, see run())
        http=protocol,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
        # Idle keep-alive longer than clients' and load balancers' own (aiohttp 15 s,
        # nginx upstream 60 s): the client side closes first, so a client never reuses a
        # connection the server is closing (ServerDisconnectedError in the soak at 5 s).
        timeout_keep_alive=75,
    )
    return QuietServer(config)


def stop_event() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT: several ingress processes bind the same port
    and the kernel spreads connections over them (``promptbus cluster``'s replicas)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve_until(
    server: QuietServer, stop: asyncio.Event, sockets: list[socket.socket] | None = None
) -> None:
    """Run ``server`` until ``stop`` is set or it exits on its own (e.g. port in use)."""
    task = asyncio.create_task(server.serve(sockets))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    waiter.cancel()
    await task
    if not server.started:
        raise SystemExit(
            f"HTTP server on {server.config.host}:{server.config.port} failed to start"
        )


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with uvloop when available: the loop matters on the hot path."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
