"""Timestamps of one request's steps, written by the ingress and the worker processes of
a traced run (``bench/trace.py``; on ``PYTHONPATH`` only there). Python imports this
module at start-up; it does nothing unless ``PROMPTBUS_TRACE_DIR`` is set.

It wraps the functions a request passes through and writes one tab-separated line per
request and process, keyed by the request id, to ``<dir>/<role>.<pid>.tsv``. It leans
on private names of the code (``BrokerClient._publish_until_acked``,
``DeploymentPool._handle``, ...): a rename shows up as an ``AttributeError`` at start."""

from __future__ import annotations

import contextvars
import os
import sys
import time
from typing import Any

_DIR = os.environ.get("PROMPTBUS_TRACE_DIR")
_ROLE = "ingress" if "ingress" in sys.argv else "worker" if "worker" in sys.argv else None
_row: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("row", default=None)


def _mark(name: str) -> None:
    row = _row.get()
    if row is not None and name not in row:
        row[name] = time.time_ns()


def _ingress(out: Any) -> None:
    import broker.client as client
    import ingress.fast_path as fast_path
    import ingress.routes.chat as chat

    call = fast_path.FastPathApp.__call__

    async def traced_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        row: dict[str, Any] = {"in": time.time_ns()}
        token = _row.set(row)
        try:
            await call(self, scope, receive, send)
        finally:
            _row.reset(token)
            if "publish" in row:
                steps = ("in", "publish", "reply", "handled")
                times = "\t".join(str(row.get(s, 0)) for s in steps)
                out.write(f"{row['id']}\t{times}\t{time.time_ns()}\n")

    publish = client.BrokerClient._publish_until_acked

    async def traced_publish(self: Any, subject: str, body: bytes, headers: Any, *a: Any) -> int:
        row = _row.get()
        if row is not None and "publish" not in row:
            row["publish"], row["id"] = time.time_ns(), headers.get("Pb-Request-Id", "")
        return await publish(self, subject, body, headers, *a)

    request = client.BrokerClient.request

    async def traced_request(self: Any, *a: Any, **k: Any) -> Any:
        answer = await request(self, *a, **k)
        _mark("reply")
        return answer

    observed = chat.observed

    async def traced_observed(*a: Any, **k: Any) -> Any:
        response = await observed(*a, **k)
        _mark("handled")
        return response

    fast_path.FastPathApp.__call__ = traced_call  # type: ignore[method-assign]
    client.BrokerClient._publish_until_acked = traced_publish  # type: ignore[method-assign]
    client.BrokerClient.request = traced_request  # type: ignore[method-assign]
    chat.observed = traced_observed


def _worker(out: Any) -> None:
    import workers.pool as pool
    import workers.providers.openai_compat as openai_compat
    from broker.nats import acks

    handle = pool.DeploymentPool._handle

    async def traced_handle(self: Any, msg: Any, lane: Any) -> None:
        row: dict[str, Any] = {"start": time.time_ns()}
        token = _row.set(row)
        try:
            await handle(self, msg, lane)
        finally:
            _row.reset(token)
            identity = acks.identity(msg.reply)
            stored = identity[2] if identity is not None else 0
            steps = ("start", "upstream", "answer", "reply", "ack")
            times = "\t".join(str(row.get(s, 0)) for s in steps)
            request_id = (msg.headers or {}).get("Pb-Request-Id", "")
            out.write(f"{request_id}\t{stored}\t{times}\t{time.time_ns()}\n")

    complete = openai_compat.OpenAICompatProvider.complete

    async def traced_complete(self: Any, *a: Any, **k: Any) -> Any:
        _mark("upstream")
        try:
            return await complete(self, *a, **k)
        finally:
            _mark("answer")

    publish_reply = pool.publish_reply

    async def traced_reply(*a: Any, **k: Any) -> None:
        _mark("reply")
        await publish_reply(*a, **k)

    send_ack = acks.AckConfirmer._send

    async def traced_send_ack(self: Any, *a: Any, **k: Any) -> None:
        _mark("ack")
        await send_ack(self, *a, **k)

    acks.AckConfirmer._send = traced_send_ack  # type: ignore[method-assign]
    pool.DeploymentPool._handle = traced_handle  # type: ignore[method-assign]
    openai_compat.OpenAICompatProvider.complete = traced_complete  # type: ignore[method-assign]
    pool.publish_reply = traced_reply


if _DIR and _ROLE:
    _out = open(f"{_DIR}/{_ROLE}.{os.getpid()}.tsv", "a", buffering=1)
    (_ingress if _ROLE == "ingress" else _worker)(_out)
