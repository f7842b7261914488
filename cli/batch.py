"""``promptbus batch submit|status|list|cancel|results``: bulk work from a JSONL file.

``submit`` accepts OpenAI batch lines (``{"custom_id", "method", "url", "body"}``) and
bare ``{"custom_id", "messages", ...}`` lines (the rest of the line and ``--model`` make
the body). The upload and the batch are remembered under the file's content hash, so
running ``submit`` again on the same file (and model) resumes that batch instead of
starting another one.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import msgspec
from nats.aio.client import Client as NATS

from broker.batches.store import BatchStore, is_terminal
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.tenancy.admission import Admission
from schemas.batch import BATCH_ENDPOINT, Batch, BatchCreate, BatchStatus
from schemas.config import Config
from schemas.errors import BrokerError

POLL_S = 0.5
_RESTART = frozenset({BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED})


class _Source(msgspec.Struct, omit_defaults=True):
    file_id: str
    batch_id: str | None = None


async def _open(config: Config, url: str) -> tuple[NATS, BatchStore]:
    nc = await connect(url, "promptbus-batch", login_for(config, Role.ADMIN))
    return nc, await BatchStore.open(nc.jetstream(), config)


def file_digest(path: Path, model: str | None) -> str:
    digest = hashlib.sha256((model or "").encode() + b"\0")
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def convert_lines(source: IO[bytes], target: IO[bytes], model: str | None) -> int:
    """Copy ``source`` to ``target`` as OpenAI batch lines; the number of lines."""
    count = 0
    for number, raw in enumerate(source, 1):
        if not raw.strip():
            continue
        try:
            line: Any = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise SystemExit(f"promptbus batch: line {number} is not JSON: {exc}") from None
        if not isinstance(line, dict):
            raise SystemExit(f"promptbus batch: line {number} is not a JSON object")
        if "body" not in line and "messages" in line:
            body = {k: v for k, v in line.items() if k != "custom_id"}
            line = {
                "custom_id": line.get("custom_id"),
                "method": "POST",
                "url": BATCH_ENDPOINT,
                "body": body,
            }
        body = line.get("body")
        if isinstance(body, dict) and "model" not in body:
            if model is None:
                raise SystemExit(f"promptbus batch: line {number} names no model; use --model")
            body["model"] = model
        target.write(msgspec.json.encode(line) + b"\n")
        count += 1
    return count


async def submit(
    config: Config,
    url: str,
    path: Path,
    model: str | None,
    wait: bool,
    output: Path | None,
    api_key: str | None = None,
) -> None:
    """Upload and start (or resume) a batch; with ``wait``/``output``, follow it to its end
    and exit non-zero when no line succeeded. ``api_key``: whose requests the lines are
    (needed when auth.required; refused up front if it is not a valid key)."""
    nc, store = await _open(config, url)
    try:
        owner = await _owner(config, nc, api_key)
        batch = await _submit(store, path, model, owner)
        print(f"batch {batch.id} ({batch.status.value})", flush=True)
        if wait or output:
            batch = await follow(store, batch.id)
            if output:
                await download(store, batch, output)
            if _nothing_succeeded(batch):
                raise SystemExit(
                    f"promptbus batch: batch {batch.id} {batch.status.value}: no line succeeded"
                )
    finally:
        await nc.drain()


async def _owner(config: Config, nc: NATS, api_key: str | None) -> tuple[str, str] | None:
    """(key id, tenant) of the key the batch runs as; None when keys are not required."""
    if not config.auth.required:
        return None
    admission = await Admission.open(nc, config)
    try:
        return admission.owner(api_key)  # 401 (a BrokerError) for a missing or bad key
    finally:
        await admission.close()


def _nothing_succeeded(batch: Batch) -> bool:
    counts = batch.request_counts
    return batch.status in _RESTART or (counts.completed == 0 and counts.failed > 0)


async def _submit(
    store: BatchStore, path: Path, model: str | None, owner: tuple[str, str] | None = None
) -> Batch:
    tenant = owner[1] if owner else None
    digest = file_digest(path, model)
    if tenant:  # each tenant resumes its own batches
        digest = hashlib.sha256(f"{digest}\0{tenant}".encode()).hexdigest()
    remembered = await store.source(digest)
    source = msgspec.json.decode(remembered, type=_Source) if remembered else None
    if source is not None and source.batch_id is not None:
        try:
            batch = await store.get(source.batch_id)
        except BrokerError:
            batch = None
        if batch is not None and not _nothing_succeeded(batch):
            print(f"resuming batch {batch.id} for {path}", file=sys.stderr, flush=True)
            return batch
    file_id = None
    if source is not None:
        try:
            await store.files.check_owner(source.file_id, tenant)
            file_id = (await store.files.info(source.file_id)).id
        except BrokerError:
            file_id = None
    if file_id is None:
        with path.open("rb") as raw, tempfile.TemporaryFile() as converted:
            lines = convert_lines(raw, converted, model)
            converted.seek(0)
            stored = await store.files.put(converted, path.name, "batch", tenant=tenant)
        file_id = stored.id
        print(f"uploaded {lines} lines as {file_id}", file=sys.stderr, flush=True)
        await store.remember_source(digest, msgspec.json.encode(_Source(file_id=file_id)))
    batch = await store.create(
        BatchCreate(input_file_id=file_id, endpoint=BATCH_ENDPOINT, completion_window="24h"),
        owner,
    )
    await store.remember_source(
        digest, msgspec.json.encode(_Source(file_id=file_id, batch_id=batch.id))
    )
    return batch


async def follow(store: BatchStore, batch_id: str) -> Batch:
    """Print a live progress line until the batch ends; the final batch."""
    started = time.monotonic()
    first_done: int | None = None
    while True:
        batch = await store.get(batch_id)
        counts = batch.request_counts
        done = counts.completed + counts.failed
        if first_done is None:
            first_done = done
        elapsed = time.monotonic() - started
        rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
        left = counts.total - done
        eta = f"{left / rate:.0f}s" if rate > 0 and left > 0 else "-"
        width = 30
        filled = int(width * done / counts.total) if counts.total else 0
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r[{bar}] {done:,}/{counts.total:,} done, {counts.failed:,} failed, "
            f"{rate:,.0f}/s, ETA {eta}, {batch.status.value}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if is_terminal(batch):
            print(file=sys.stderr)
            if batch.errors and batch.errors.data:
                for error in batch.errors.data:
                    where = f" (line {error.line})" if error.line else ""
                    print(f"  {error.code}{where}: {error.message}", file=sys.stderr)
            return batch
        await asyncio.sleep(POLL_S)


async def download(store: BatchStore, batch: Batch, output: Path) -> None:
    """The output file to ``output``, the error file (if any) beside it."""
    targets = [(batch.output_file_id, output)]
    if batch.error_file_id:
        targets.append((batch.error_file_id, output.with_suffix(".errors.jsonl")))
    for file_id, path in targets:
        with path.open("wb") as target:
            if file_id:
                async for chunk in store.files.chunks(file_id):
                    target.write(chunk)
        print(f"wrote {path}", file=sys.stderr)


async def status(config: Config, url: str, batch_id: str) -> None:
    nc, store = await _open(config, url)
    try:
        print(msgspec.json.format(msgspec.json.encode(await store.get(batch_id))).decode())
    finally:
        await nc.drain()


async def list_batches(config: Config, url: str, limit: int) -> None:
    nc, store = await _open(config, url)
    try:
        page = await store.list(limit=limit)
        print(f"{'id':<36} {'status':<12} {'total':>9} {'completed':>9} {'failed':>7}")
        for batch in page.data:
            counts = batch.request_counts
            print(
                f"{batch.id:<36} {batch.status.value:<12} {counts.total:>9} "
                f"{counts.completed:>9} {counts.failed:>7}"
            )
    finally:
        await nc.drain()


async def cancel(config: Config, url: str, batch_id: str) -> None:
    nc, store = await _open(config, url)
    try:
        batch = await store.cancel(batch_id)
        print(f"batch {batch.id}: {batch.status.value}")
    finally:
        await nc.drain()


async def results(config: Config, url: str, batch_id: str, output: Path, wait: bool) -> None:
    nc, store = await _open(config, url)
    try:
        batch = await follow(store, batch_id) if wait else await store.get(batch_id)
        if not is_terminal(batch):
            raise SystemExit(f"promptbus batch: {batch_id} is {batch.status.value}; use --wait")
        await download(store, batch, output)
    finally:
        await nc.drain()
