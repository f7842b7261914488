"""The component that drives batches: validate the input file, publish its lines into the
lane, collect the results, and write the output and error files.

Runs as ``promptbus batcher`` (and inside ``promptbus up``). Everything it needs to
resume is in NATS, so a restarted runner continues where the last one stopped:

- the batch record's status (KV, compare-and-set);
- a publishing checkpoint, written after every confirmed block of lines; lines past it
  are re-published with the same ``Nats-Msg-Id`` (JetStream drops the duplicates);
- the results stream, one subject per batch; a line answered twice (a worker died
  between reply and ack) is stored twice and counted once (``Results`` keeps a byte per
  line).

Memory per running batch: one byte per line (which lines are done), the stream sequence
of each line still queued (at most ``batch.max_outstanding``) and two blocks of lines
being published. Files are read and written in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from array import array
from collections.abc import Callable
from typing import IO

import msgspec
import numpy as np
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker.batches.blocks import lines_per_block, pack
from broker.batches.results import H_LINE_ERROR, Results
from broker.batches.store import (
    BatchStore,
    encode_custom_id,
    is_terminal,
    lane_subject,
    line_request_id,
    result_subject,
)
from broker.nats.block_publish import BlockPublisher, Message, PublishError
from broker.nats.connection import close as close_connection
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.lease import KVLease, new_owner
from broker.nats.provision import provision
from broker.nats.subjects import Subjects
from broker.nats.tasks import cancel_and_wait, raise_if_cancelled
from broker.responses.conversation import decode_stateless
from broker.tenancy.admission import Admission
from schemas.batch import (
    BATCH_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    RESPONSES_ENDPOINT,
    BatchError,
    BatchErrors,
    BatchRecord,
    BatchStatus,
    LineError,
    line_decoder,
)
from schemas.chat import ChatCompletionRequest, embedding_request_decoder, request_decoder
from schemas.completions import (
    CompletionRequest,
    decode_completion_request,
    speaks_text_completions,
)
from schemas.config import HEADER_ROOM, Config
from schemas.depth import check_depth, decode_checked
from schemas.envelope import (
    H_API,
    H_CUSTOM_ID,
    H_DEADLINE,
    H_KIND,
    H_MSG_ID,
    H_REPLY_TO,
    H_REQUEST_ID,
    H_STATUS,
    RESPONSES,
    TEXT_COMPLETIONS,
    ReplyKind,
    Tenancy,
)
from schemas.errors import (
    BrokerError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    no_text_completions,
    request_too_large,
    wrong_endpoint,
)
from schemas.responses import ResponseRequest

log = logging.getLogger(__name__)

SCAN_S = 1.0  # how often new batches are looked for
PROGRESS_S = 0.5  # how often counts are written to the record (and cancels noticed)
BLOCK = 500  # lines per confirmed block; the checkpoint moves a block at a time
PUBLISH_TIMEOUT_S = 10.0  # a block not confirmed by then is published again
MAX_FILE_ERRORS = 10  # a malformed file reports this many problems at most
FETCH = 1000  # results read per fetch
FETCH_PAUSE_S = 0.05  # after a short fetch: fewer, fuller fetches
WITHDRAW_QUIET_S = 2.0  # after a cancel, results still arriving are waited for this long
REPAIR_QUIET_S = 3.0  # no new result for this long: look for lost lines
REPAIR_BACKOFF_MAX_S = 60.0  # found none lost: look again after twice as long, up to this
REPAIR_CHECKS = 256  # stream lookups in flight at once while looking
UNKNOWN_STALL_S = 60.0  # lines queued by an earlier run: published again after this stall
SPENDING_CHECK_S = 1.0  # how often a metered key's budgets and quota are read
IDLE_CHECK_S = 5.0  # no result for this long: ask whether the results consumer still works


EXPIRED_LINE = LineError(
    code="batch_expired",
    message="This request could not be executed before the completion window expired.",
)


class MalformedLine(Exception):
    pass


class Batcher:
    """Finds unfinished batches and runs each one it can lease (broker/nats/lease.py)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.subjects = Subjects.of(config)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._finished: set[str] = set()
        self._scan_task: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        self._owns_connection = False
        self.store: BatchStore | None = None
        self.admission: Admission | None = None
        self.owner = new_owner()  # this batcher's name in batch leases

    async def start(self, url: str | None = None, nc: NATS | None = None) -> None:
        if nc is None:
            nc = await connect(
                url or self.config.nats.url or "",
                "promptbus-batcher",
                login_for(self.config, Role.BATCHER),
            )
            self._owns_connection = True
        self._nc = nc
        js = nc.jetstream()
        await provision(js, self.config, self.subjects)
        self.store = await BatchStore.open(js, self.config)
        if self.config.auth.required:  # lines run in the name of the batch's key
            self.admission = await Admission.open(nc, self.config)
        self._scan_task = asyncio.create_task(self._scan(nc))

    async def _scan(self, nc: NATS) -> None:
        assert self.store is not None
        while True:
            try:
                for batch_id in await self.store.ids():
                    if batch_id in self._finished or batch_id in self._running:
                        continue
                    record, _ = await self.store.record(batch_id)
                    if is_terminal(record.batch):
                        self._finished.add(batch_id)
                        continue
                    lease = KVLease(
                        self.store.kv,
                        lease_key(batch_id),
                        self.owner,
                        self.config.batch.lease_ttl_s,
                    )
                    if not await lease.acquire():
                        continue  # another batcher runs it
                    run = BatchRun(self.config, nc, self.store, batch_id, self.admission)
                    task = asyncio.create_task(self._run(run, lease))
                    self._running[batch_id] = task
            except Exception as exc:
                log.warning("batch scan failed: %s", exc)
            await asyncio.sleep(SCAN_S)

    async def _run(self, run: BatchRun, lease: KVLease) -> None:
        """Run the batch while holding its lease; stop if another batcher takes it."""
        work = asyncio.create_task(run.run())
        keeper = asyncio.create_task(lease.keep())
        try:
            await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.warning("batch %s: lease lost; another batcher goes on", run.batch_id)
                return
            work.result()  # the run's exception, if any
            self._finished.add(run.batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: run failed; it will be resumed", run.batch_id)
            await asyncio.sleep(SCAN_S)
        finally:
            await cancel_and_wait(work, keeper)
            await lease.release()
            self._running.pop(run.batch_id, None)

    async def stop(self) -> None:
        if self._scan_task:
            self._scan_task.cancel()
        await cancel_and_wait(*self._running.values())
        if self.admission is not None:
            await self.admission.close()
        if self._nc is not None and self._owns_connection:
            with contextlib.suppress(Exception):
                await close_connection(self._nc)


class BatchRun:
    """One batch from wherever it stands to a terminal status."""

    def __init__(
        self,
        config: Config,
        nc: NATS,
        store: BatchStore,
        batch_id: str,
        admission: Admission | None = None,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self.files = store.files
        self.subjects = store.subjects
        self.batch_id = batch_id
        self.total = 0
        self.results = Results(batch_id, 0)
        self.results.close()
        self.stop_reason: BatchStatus | None = None
        self._progress = asyncio.Event()
        self._deadline_ms = 0
        self._admission = admission
        self._keys = admission.keys if admission is not None else None
        self._repairs = 0
        self._refused: LineError | None = None  # the key's spending ran out
        self._spending_checked = 0.0
        self._owner: Tenancy | None = None  # the batch's key, signed per line
        self._allowed: set[str] | None = None  # models the key may use (None: all)
        self._endpoint = BATCH_ENDPOINT  # what every line calls: the batch's endpoint
        # A line whose request NATS could not carry fails alone, in the error file.
        self._max_line_bytes = nc.max_payload - HEADER_ROOM
        self._block_lines: dict[str, int] = {}  # lane subject -> lines per block message

    # ------------------------------------------------------------ the whole run

    async def run(self) -> None:
        record, _ = await self.store.record(self.batch_id)
        batch = record.batch
        self._deadline_ms = batch.expires_at * 1000
        self._endpoint = batch.endpoint
        self._own(record)
        if batch.status is BatchStatus.VALIDATING:
            record = await self.validate(record)
            batch = record.batch
        results: Results | None = None
        if batch.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
            self.total = batch.request_counts.total
            outcome, results = await self.process(record)
            record = await self.store.update(self.batch_id, _finalizing(outcome, self._refused))
            batch = record.batch
        if batch.status is BatchStatus.FINALIZING:
            self.total = batch.request_counts.total
            await self.finalize(record.outcome or BatchStatus.COMPLETED, results, record.refused)

    def _own(self, record: BatchRecord) -> None:
        """Lines of a batch created with a key run as that key's requests: admitted here
        (models) and signed, so the worker records their usage without admitting again."""
        if self._keys is None or record.key_id is None:
            return
        key = self._keys.key(record.key_id)
        tenant = self._keys.tenant(record.tenant or "")
        team = self._keys.team(key.tenant, key.team) if key is not None and key.team else None
        budgets = (
            bool(key and key.budgets)
            or bool(tenant and (tenant.budgets or tenant.quota))
            or bool(team and (team.budgets or team.quota))
        )
        self._owner = Tenancy(
            record.key_id, record.tenant or "", metered=budgets, team=team.name if team else ""
        )
        allowed = (key.models if key else None, team.models if team else None)
        for models in (*allowed, tenant.models if tenant else None):
            if models is not None:
                self._allowed = (
                    set(models) if self._allowed is None else self._allowed & set(models)
                )

    # ------------------------------------------------------------ validation

    async def validate(self, record: BatchRecord) -> BatchRecord:
        """A file that is not JSONL with a ``custom_id`` on every line, unique, fails the
        batch with the reasons; line-level problems are left for the error file."""
        errors: list[BatchError] = []
        hashes = array("Q")
        number = 0
        async for line in self.files.lines(record.batch.input_file_id):
            number += 1
            if not line.strip():
                continue
            try:
                custom_id = _custom_id(line)
            except MalformedLine as exc:
                errors.append(BatchError(code=exc.args[0], message=exc.args[1], line=number))
                if len(errors) >= MAX_FILE_ERRORS:
                    break
                continue
            hashes.append(_hash64(custom_id))
        if not errors and not hashes:
            errors.append(BatchError(code="empty_file", message="The input file has no lines."))
        duplicate = _first_duplicate(hashes) if len(errors) < MAX_FILE_ERRORS else None
        if duplicate is not None:  # reported beside the other errors, not instead of them
            errors.append(await self._duplicate_error(record, duplicate))
        now = int(time.time())

        def change(current: BatchRecord) -> BatchRecord | None:
            batch = current.batch
            if batch.status is not BatchStatus.VALIDATING:
                return None  # cancelled meanwhile: process() will finish it
            if errors:
                batch.status = BatchStatus.FAILED
                batch.failed_at = now
                batch.errors = BatchErrors(data=errors)
            else:
                batch.status = BatchStatus.IN_PROGRESS
                batch.in_progress_at = now
            # A failed batch runs nothing: no requests to count (as OpenAI reports it).
            batch.request_counts.total = 0 if errors else len(hashes)
            return current

        record = await self.store.update(self.batch_id, change)
        if errors:
            log.info("batch %s failed validation: %s", self.batch_id, errors[0].message)
        return record

    async def _duplicate_error(self, record: BatchRecord, digest: int) -> BatchError:
        """Name the duplicated custom_id and the line of its second occurrence."""
        number = 0
        seen = False
        async for line in self.files.lines(record.batch.input_file_id):
            number += 1
            if not line.strip():
                continue
            try:
                custom_id = _custom_id(line)
            except MalformedLine:
                continue  # reported already
            if _hash64(custom_id) == digest:
                if seen:
                    return BatchError(
                        code="duplicate_custom_id",
                        message=f"The custom_id `{custom_id}` appears more than once.",
                        param="custom_id",
                        line=number,
                    )
                seen = True
        return BatchError(code="duplicate_custom_id", message="Duplicate custom_id.")

    # ------------------------------------------------------------ publishing, collecting

    async def process(self, record: BatchRecord) -> tuple[BatchStatus, Results]:
        """Publish from the checkpoint on while collecting results; the batch's outcome."""
        results = Results(self.batch_id, self.total)
        self.results = results
        collector = asyncio.create_task(self._collect(results, drain=False))
        monitor = asyncio.create_task(self._monitor())
        try:
            if record.batch.status is BatchStatus.CANCELLING:
                self.stop_reason = BatchStatus.CANCELLED
            elif await self._spending_refused():
                self.stop_reason = BatchStatus.COMPLETED
            if self.stop_reason is None:
                await self._publish_all(record)
            await self._await_results(record)
            if self.stop_reason is not None:
                await self._withdraw()
            return self.stop_reason or BatchStatus.COMPLETED, results
        except BaseException:
            results.close()
            raise
        finally:
            await cancel_and_wait(monitor, collector)

    async def _await_results(self, record: BatchRecord) -> None:
        """Wait for the last results; when they stop coming, look for lost lines."""
        results = self.results
        last_count, last_change = results.done_count, time.monotonic()
        last_repair, pause = 0.0, REPAIR_QUIET_S
        while self.stop_reason is None and results.done_count < self.total:
            await self._wait_progress()
            now = time.monotonic()
            if results.done_count != last_count:
                last_count, last_change = results.done_count, now
                pause = REPAIR_QUIET_S
            elif now - last_change >= REPAIR_QUIET_S and now - last_repair >= pause:
                last_repair = now
                repaired = await self._repair(record, stalled=now - last_change)
                # Nothing lost: the lines wait for capacity. Look less often.
                pause = REPAIR_QUIET_S if repaired else min(2 * pause, REPAIR_BACKOFF_MAX_S)

    async def _repair(self, record: BatchRecord, stalled: float) -> bool:
        """Publish again the lines that have no result and are no longer queued; True if
        there were any.

        A result can be lost when nats-server stops between a worker's reply and its ack
        (JetStream stores the reply asynchronously, the ack removes the line from the
        queue), and while the results stream elects a leader: a node killed under load
        took 7 s and ~3,000 results with it. Lines whose stream sequence this run knows are
        checked one by one, ``REPAIR_CHECKS`` at a time; lines published by an earlier run
        (sequence unknown) are published again only after a long stall. Lines still queued
        wait for capacity, and the caller then looks less often."""
        done = np.frombuffer(self.results.done, dtype=np.uint8)
        missing = np.flatnonzero(done == 0)
        if missing.size == 0:
            return False
        queued = self.results.queued

        async def gone(seq: int) -> bool:
            try:
                await self.js.get_msg(self.subjects.bulk_stream, seq)
            except NotFoundError:
                return True
            except Exception:
                return False
            return False

        candidates = [int(i) for i in missing]
        seqs = sorted({queued[i] for i in candidates if i in queued})  # a block: one lookup
        verdicts: list[bool] = []
        for start in range(0, len(seqs), REPAIR_CHECKS):
            verdicts += await asyncio.gather(*map(gone, seqs[start : start + REPAIR_CHECKS]))
        vanished = {seq for seq, g in zip(seqs, verdicts, strict=True) if g}
        unknown_lost = stalled >= UNKNOWN_STALL_S
        lost = {i for i in candidates if (queued[i] in vanished if i in queued else unknown_lost)}
        if not lost:
            return False
        self._repairs += 1
        log.warning("batch %s: %d lines lost, publishing them again", self.batch_id, len(lost))
        block: list[tuple[int, Message]] = []
        index = -1
        async for line in self.files.lines(record.batch.input_file_id):
            if not line.strip():
                continue
            index += 1
            if index in lost:
                line_index, (subject, body, headers) = self._message(index, line)
                headers[H_MSG_ID] += f":repair{self._repairs}"  # past the duplicate window
                block.append((line_index, (subject, body, headers)))
        publisher = BlockPublisher(self.nc)
        await publisher.start()
        try:
            for start in range(0, len(block), BLOCK):
                await self._publish_block(publisher, block[start : start + BLOCK], None)
        finally:
            await publisher.stop()
        return True

    async def _wait_progress(self) -> None:
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), PROGRESS_S)
        raise_if_cancelled()

    async def _publish_all(self, record: BatchRecord) -> None:
        start = await self.store.checkpoint(self.batch_id)
        if start:
            log.info("batch %s: resuming publishing at line %d", self.batch_id, start)
        publisher = BlockPublisher(self.nc)
        await publisher.start()
        try:
            index = -1
            block: list[tuple[int, Message]] = []
            pending: asyncio.Task[None] | None = None
            async for line in self.files.lines(record.batch.input_file_id):
                if not line.strip():
                    continue
                index += 1
                if index < start:
                    continue
                block.append(self._message(index, line))
                if len(block) < BLOCK:
                    continue
                if pending is not None:
                    await pending  # two blocks in flight: one is sent while one confirms
                while index - self.results.done_count >= self.config.batch.max_outstanding:
                    if self.stop_reason is not None:
                        return
                    await self._wait_progress()
                if self.stop_reason is not None:
                    return
                pending = asyncio.create_task(self._publish_block(publisher, block, index + 1))
                block = []
            if pending is not None:
                await pending
            if block and self.stop_reason is None:
                await self._publish_block(publisher, block, index + 1)
        finally:
            await publisher.stop()

    def _message(self, index: int, line: bytes) -> tuple[int, Message]:
        """The lane request for line ``index``, or (index -1) the line's error result."""
        custom_id = _custom_id(line)  # validated already
        reply = result_subject(self.subjects, self.batch_id)
        headers = {
            H_REQUEST_ID: line_request_id(self.batch_id, index),
            H_MSG_ID: f"{self.batch_id}:{custom_id}",
            H_CUSTOM_ID: encode_custom_id(custom_id),
        }
        try:
            if len(line) > self._max_line_bytes:
                raise request_too_large(self._max_line_bytes, "The line's request body")
            parsed = decode_checked(line_decoder, line)
            model = self._check_line(parsed.method, parsed.url, bytes(parsed.body))
            if parsed.url in _APIS:
                headers[H_API] = _APIS[parsed.url]
        except BrokerError as exc:
            headers |= {
                H_KIND: ReplyKind.ERROR.value,
                H_STATUS: str(exc.status),
                H_LINE_ERROR: exc.detail.code or "invalid_request",
            }
            return -1, (reply, exc.to_json(), headers)
        body = bytes(parsed.body)
        headers |= {H_REPLY_TO: reply, H_DEADLINE: str(self._deadline_ms)}
        if self._owner is not None and self._keys is not None:
            owner = msgspec.structs.replace(self._owner, estimate=len(body) // 4)
            signed = self._keys.sign_tenancy(
                headers[H_REQUEST_ID], owner, reply, self._deadline_ms, body
            )
            headers |= signed.to_headers()
        subject = lane_subject(self.subjects, model)
        if subject not in self._block_lines:
            found = self.config.model(model)
            most = self.config.batch.lines_per_message
            self._block_lines[subject] = lines_per_block(found, most) if found else 1
        return index, (subject, body, headers)

    def _lines_per_block(self, subject: str) -> int:
        return self._block_lines.get(subject, 1)

    def _check_line(self, method: str, url: str, body: bytes) -> str:
        """The line's model if it can be queued, else the error its error-file line gets."""
        if method.upper() != "POST":
            raise InvalidRequest(
                400, f"Unsupported method `{method}`: use POST.", code="invalid_method"
            )
        if url != self._endpoint:
            raise InvalidRequest(
                400,
                f"Unsupported url `{url}`: this batch serves {self._endpoint}.",
                code="invalid_url",
            )
        mode = "chat"
        if url == EMBEDDINGS_ENDPOINT:
            mode, name = "embeddings", decode_checked(embedding_request_decoder, body).model
        else:
            request: ChatCompletionRequest | CompletionRequest | ResponseRequest
            if url == COMPLETIONS_ENDPOINT:
                request = decode_completion_request(body)[0]
            elif url == RESPONSES_ENDPOINT:
                request = _stateless_response(body)
            else:
                request = decode_checked(request_decoder, body)
            if request.stream:
                raise InvalidRequest(
                    400,
                    "Streaming is not supported in batches.",
                    param="stream",
                    code="invalid_request",
                )
            name = request.model
        model = self.config.model(name)
        if model is None:
            raise NotFound(
                404,
                f"The model `{name}` does not exist.",
                param="model",
                code="model_not_found",
            )
        if model.mode != mode:
            raise wrong_endpoint(name, model.mode)
        if url == COMPLETIONS_ENDPOINT and not speaks_text_completions(model):
            raise no_text_completions(name)
        if self._allowed is not None and name not in self._allowed:
            raise PermissionDenied(
                403,
                f"The batch's API key may not use model `{name}`.",
                param="model",
                code="model_not_allowed",
            )
        return name

    async def _publish_block(
        self, publisher: BlockPublisher, block: list[tuple[int, Message]], handled: int | None
    ) -> None:
        """Publish a block until JetStream has stored all of it (again after a timeout or
        an error: duplicates are dropped by ``Nats-Msg-Id``), then move the checkpoint."""
        packed = pack(block, self._lines_per_block, self._max_line_bytes)
        messages = [message for _, message in packed]
        while True:
            try:
                seqs = await publisher.publish(messages, PUBLISH_TIMEOUT_S)
                break
            except (PublishError, TimeoutError) as exc:
                log.warning("batch %s: publishing a block again (%s)", self.batch_id, exc)
                await asyncio.sleep(0.5)
        done, queued = self.results.done, self.results.queued
        for (indices, _), seq in zip(packed, seqs, strict=True):
            for index in indices:
                if index >= 0 and not done[index]:
                    queued[index] = seq
        while handled is not None:
            try:
                await self.store.set_checkpoint(self.batch_id, handled)
                return
            except Exception as exc:
                log.warning("batch %s: cannot write the checkpoint (%s)", self.batch_id, exc)
                await asyncio.sleep(0.5)

    async def _collect(self, results: Results, *, drain: bool) -> None:
        """Read the batch's results into ``results``, live (until cancelled) or, with
        ``drain``, until every stored result is read. A consumer lost to a reconnect
        starts over from the first result: the files are rewritten, nothing counts twice."""
        while True:
            sub: JetStreamContext.PullSubscription | None = None
            try:
                sub = await self._results_subscription()
                remaining = (await sub.consumer_info()).num_pending or 0
                idle_since, stalled = time.monotonic(), 0
                while not drain or remaining > 0:
                    try:
                        msgs = await sub.fetch(FETCH, timeout=1.0)
                    except TimeoutError:
                        raise_if_cancelled()
                        if time.monotonic() - idle_since >= IDLE_CHECK_S:
                            idle_since = time.monotonic()
                            stalled = await check_results_consumer(sub, stalled)
                        continue
                    raise_if_cancelled()
                    idle_since, stalled = time.monotonic(), 0
                    for msg in msgs:
                        results.add(msg)
                    remaining -= len(msgs)
                    self._progress.set()
                    if len(msgs) < FETCH:
                        await asyncio.sleep(FETCH_PAUSE_S)  # let results pile up a little
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("batch %s: reading results again (%s)", self.batch_id, exc)
                results.reset()
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    async def _results_subscription(self) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe(
            result_subject(self.subjects, self.batch_id),
            stream=self.subjects.results_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )

    async def _monitor(self) -> None:
        """Write the counts to the record; notice a cancel, the expiry, and the end of
        the key's budget or quota."""
        while True:
            await asyncio.sleep(PROGRESS_S)
            try:
                record = await self._write_counts()
            except Exception as exc:
                log.warning("batch %s: cannot write progress (%s)", self.batch_id, exc)
                continue
            if record.batch.status is BatchStatus.CANCELLING:
                self.stop_reason = BatchStatus.CANCELLED
            elif time.time() >= record.batch.expires_at:
                self.stop_reason = BatchStatus.EXPIRED
            elif await self._spending_refused():
                self.stop_reason = BatchStatus.COMPLETED  # what ran is the batch's output
            if self.stop_reason is not None:
                self._progress.set()
                return

    async def _spending_refused(self) -> bool:
        """Has the batch's key run out of budget or quota? Checked every
        ``SPENDING_CHECK_S`` for keys with any; lines still queued are then withdrawn and
        the unanswered ones fail with the admission's error, so spending stops within
        the lines running at that moment, as for interactive requests."""
        owner, admission = self._owner, self._admission
        if owner is None or admission is None or not owner.metered:
            return False
        now = time.monotonic()
        if now - self._spending_checked < SPENDING_CHECK_S:
            return False
        self._spending_checked = now
        try:
            await admission.check_spending(owner.key_id, owner.tenant)
        except BrokerError as exc:
            code = exc.detail.code or "insufficient_quota"
            self._refused = LineError(code=code, message=exc.detail.message)
            log.info("batch %s stopped: %s", self.batch_id, exc.detail.message)
            return True
        except Exception as exc:  # counters unreadable: try again at the next check
            log.warning("batch %s: cannot check spending (%s)", self.batch_id, exc)
        return False

    async def _write_counts(self) -> BatchRecord:
        completed, failed = self.results.completed, self.results.failed

        def change(record: BatchRecord) -> BatchRecord | None:
            counts = record.batch.request_counts
            if (counts.completed, counts.failed) == (completed, failed):
                return None
            counts.completed, counts.failed = completed, failed
            return record

        return await self.store.update(self.batch_id, change)

    async def _withdraw(self) -> None:
        """Take the batch's still-queued lines out of the work queue (pipelined deletes);
        the ones a worker holds already finish, and their results are waited for briefly."""
        seqs = sorted(set(self.results.queued.values()))  # a block's lines share one

        async def delete(seq: int) -> bool:
            try:
                return bool(await self.js.delete_msg(self.subjects.bulk_stream, seq))
            except Exception:
                return False  # acked (done) meanwhile, or held by a worker

        withdrawn = 0
        for start in range(0, len(seqs), BLOCK):
            deleted = await asyncio.gather(*(delete(s) for s in seqs[start : start + BLOCK]))
            withdrawn += sum(deleted)
        log.info(
            "batch %s %s: %d queued messages withdrawn", self.batch_id, self.stop_reason, withdrawn
        )
        quiet_since = time.monotonic()
        seen = self.results.done_count
        while time.monotonic() - quiet_since < WITHDRAW_QUIET_S:
            await asyncio.sleep(0.2)
            if self.results.done_count != seen:
                seen, quiet_since = self.results.done_count, time.monotonic()

    # ------------------------------------------------------------ output files

    async def finalize(
        self, outcome: BatchStatus, results: Results | None, refused: LineError | None = None
    ) -> None:
        """Store the output and error files, then the final record."""
        if results is None:  # finalizing was interrupted: read the results again
            results = Results(self.batch_id, self.total)
            self.results = results
            await self._collect(results, drain=True)
        try:
            if outcome is BatchStatus.EXPIRED:
                await self._unanswered_lines(results, EXPIRED_LINE)
            elif refused is not None and outcome is BatchStatus.COMPLETED:
                await self._unanswered_lines(results, refused)
            output_id = await self._store_file(results.output, "output")
            error_id = await self._store_file(results.errors, "errors")
        finally:
            results.close()
        completed, failed = results.completed, results.failed
        now = int(time.time())

        def change(record: BatchRecord) -> BatchRecord:
            batch = record.batch
            batch.status = outcome
            batch.output_file_id, batch.error_file_id = output_id, error_id
            batch.request_counts.completed = completed
            batch.request_counts.failed = failed
            if outcome is BatchStatus.COMPLETED:
                batch.completed_at = now
            elif outcome is BatchStatus.CANCELLED:
                batch.cancelled_at = now
            else:
                batch.expired_at = now
            record.outcome = None
            return record

        await self.store.update(self.batch_id, change)
        with contextlib.suppress(Exception):
            await self.js.purge_stream(
                self.subjects.results_stream, subject=result_subject(self.subjects, self.batch_id)
            )
        await self.store.forget_checkpoint(self.batch_id)
        log.info(
            "batch %s %s: %d completed, %d failed", self.batch_id, outcome.value, completed, failed
        )

    async def _unanswered_lines(self, results: Results, error: LineError) -> None:
        """An expired batch lists the lines it never answered, as OpenAI does; so does a
        batch stopped by its key's budget or quota."""
        record, _ = await self.store.record(self.batch_id)
        index = -1
        async for line in self.files.lines(record.batch.input_file_id):
            if not line.strip():
                continue
            index += 1
            if index < self.total and not results.done[index]:
                results.add_error(index, _custom_id(line), error)

    async def _store_file(self, data: IO[bytes], kind: str) -> str | None:
        if data.tell() == 0:
            return None
        data.seek(0)
        file_id = f"file-{self.batch_id.removeprefix('batch_')}-{kind}"
        stored = await self.files.put(
            data,  # type: ignore[arg-type]
            f"{self.batch_id}_{kind}.jsonl",
            "batch_output",
            file_id=file_id,
            tenant=self._owner.tenant if self._owner is not None else None,
        )
        return stored.id


class ConsumerStalled(Exception):
    """The results consumer holds results it does not deliver."""


async def check_results_consumer(sub: JetStreamContext.PullSubscription, stalled: int) -> int:
    """Raise if an idle results consumer is gone or stuck; how many idle checks in a row
    found results waiting.

    After nats-server restarts, or the node holding an ephemeral consumer dies, fetches
    can time out for ever without an error: the server answers a pull on a deleted
    consumer with a 409 that nats-py takes for "no messages", and a pull subscription
    does not outlive a server reboot (nats-io/nats.py#504). A batch then had every
    result stored and waited, in_progress, until another batcher took its lease over.
    ``consumer_info`` raises when the consumer is gone; results pending on two checks
    in a row with nothing delivered between them mean it is stuck."""
    info = await sub.consumer_info()
    if not info.num_pending:
        return 0
    if stalled >= 1:
        raise ConsumerStalled(f"{info.num_pending} results pending, none delivered")
    return stalled + 1


def lease_key(batch_id: str) -> str:
    """The batch's lease in the batches bucket: which batcher runs it."""
    return f"run.{batch_id}"


def _finalizing(
    outcome: BatchStatus, refused: LineError | None
) -> Callable[[BatchRecord], BatchRecord]:
    def change(record: BatchRecord) -> BatchRecord:
        record.batch.status = BatchStatus.FINALIZING
        record.batch.finalizing_at = int(time.time())
        record.outcome = outcome
        record.refused = refused
        return record

    return change


class _Head(msgspec.Struct):
    custom_id: str


_head_decoder = msgspec.json.Decoder(_Head)


_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')


# The header naming a line's API, for the endpoints that are not chat's own.
_APIS = {COMPLETIONS_ENDPOINT: TEXT_COMPLETIONS, RESPONSES_ENDPOINT: RESPONSES}


def _stateless_response(body: bytes) -> ResponseRequest:
    """A Responses line: stateless, as on the bus, and not stored."""
    request = decode_stateless(body, "in batches")
    if request.store:
        raise InvalidRequest(
            400,
            "`store` is not supported in batches: batch responses are not stored.",
            param="store",
            code="unsupported_parameter",
        )
    return request


def _custom_id(line: bytes) -> str:
    try:
        check_depth(line)
    except BrokerError:
        # Too deep to decode (the line fails with json_too_deep in the error file): its
        # custom_id is still needed to name it there.
        match = _CUSTOM_ID.search(line)
        if match is None:
            raise MalformedLine("missing_custom_id", "The line has no `custom_id`.") from None
        try:
            return str(msgspec.json.decode(match.group(1)))
        except msgspec.DecodeError:
            raise MalformedLine("invalid_json_line", "The line is not valid JSON.") from None
    try:
        return _head_decoder.decode(line).custom_id
    except msgspec.ValidationError as exc:
        if "custom_id" in str(exc) and "missing" in str(exc).lower():
            raise MalformedLine("missing_custom_id", "The line has no `custom_id`.") from None
        raise MalformedLine("invalid_request", f"Invalid line: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedLine("invalid_json_line", f"The line is not valid JSON: {exc}") from None


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _first_duplicate(hashes: array[int]) -> int | None:
    """A hash that occurs twice, in 8 bytes a line (no set of every custom_id)."""
    values = np.frombuffer(hashes, dtype=np.uint64)
    ordered = np.sort(values)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return int(repeated[0]) if repeated.size else None
