"""A batch's results as the batcher reads them from the results stream: which lines are
done (one byte a line), the counts, and the output and error files being written."""

from __future__ import annotations

import tempfile
from typing import IO

import msgspec
from nats.aio.msg import Msg

from broker.batches.store import decode_custom_id, line_index
from schemas.batch import LineError, OutputLine, OutputResponse, encoder
from schemas.envelope import H_CUSTOM_ID, H_REQUEST_ID, H_STATUS

H_LINE_ERROR = "Pb-Batch-Error"  # a line refused before queueing: the error code


class Results:
    """A batch's results as they are read: which lines are done, the counts, and the
    output and error files (temporary files on disk, stored once the batch ends)."""

    def __init__(self, batch_id: str, total: int) -> None:
        self._line_prefix = f"batch_req_{batch_id.removeprefix('batch_')}_"
        self.total = total
        self.output: IO[bytes] = tempfile.TemporaryFile()
        self.errors: IO[bytes] = tempfile.TemporaryFile()
        self.queued: dict[int, int] = {}  # line index -> stream sequence, while queued
        self.reset()

    def reset(self) -> None:
        for data in (self.output, self.errors):
            data.seek(0)
            data.truncate()
        self.done = bytearray(self.total)
        self.done_count = self.completed = self.failed = 0

    def close(self) -> None:
        self.output.close()
        self.errors.close()

    def add(self, msg: Msg) -> None:
        """One stored result; a line already seen (answered twice) is skipped, and so is
        a message that names no line of this batch."""
        headers = msg.headers or {}
        request_id = headers.get(H_REQUEST_ID, "")
        try:
            index = line_index(request_id)
        except ValueError:
            return
        if not 0 <= index < self.total or self.done[index]:
            return
        self._mark(index)
        custom_id = decode_custom_id(headers.get(H_CUSTOM_ID, "%00"))
        code = headers.get(H_LINE_ERROR)
        if code is not None:  # refused before queueing: no HTTP response to report
            try:
                message = str(msgspec.json.decode(msg.data)["error"]["message"])
            except Exception:
                message = msg.data.decode(errors="replace")
            self._write(index, custom_id, None, LineError(code=code, message=message))
            return
        response = OutputResponse(
            status_code=int(headers.get(H_STATUS, "200")),
            request_id=request_id,
            body=msgspec.Raw(msg.data),
        )
        self._write(index, custom_id, response, None)

    def add_error(self, index: int, custom_id: str, error: LineError) -> None:
        self._mark(index)
        self._write(index, custom_id, None, error)

    def _mark(self, index: int) -> None:
        self.done[index] = 1
        self.done_count += 1
        self.queued.pop(index, None)

    def _write(
        self, index: int, custom_id: str, response: OutputResponse | None, error: LineError | None
    ) -> None:
        line = OutputLine(
            id=f"{self._line_prefix}{index}", custom_id=custom_id, response=response, error=error
        )
        if error is None and response is not None and response.status_code < 400:
            self.completed += 1
            self.output.write(encoder.encode(line) + b"\n")
        else:
            self.failed += 1
            self.errors.write(encoder.encode(line) + b"\n")
