"""Bulk batches end to end: the openai SDK's batch flow, the CLI, and crashes mid-batch.

A stack of its own (the tests kill workers, the batcher and nats-server): a nats-server
that can be restarted on the same port and store, a mock upstream, two worker processes,
the batcher and the ingress.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker.nats.embedded import EmbeddedNats, free_port
from tests import bus
from tests.procs import PROMPTBUS, ROOT, Proc, wait_http, wait_port

MODELS = ["batch-gpt", "batch-slow", "batch-upstream", "batch-embed"]


class BatchEnv:
    def __init__(self, work: Path, nats: EmbeddedNats, config: Path, ingress: str) -> None:
        self.work = work
        self.nats = nats
        self.config = config
        self.ingress = ingress
        self.workers: list[Proc] = []
        self.batcher: Proc | None = None
        self.http = httpx.Client(base_url=ingress, timeout=30)

    def start_worker(self) -> Proc:
        index = len(self.workers)
        args = [*PROMPTBUS, "worker", "-c", str(self.config)]
        worker = Proc(
            [*args, *(a for m in MODELS for a in ("--model", m))], self.work / f"w{index}.log"
        )
        self.workers.append(worker)
        return worker

    def start_batcher(self) -> Proc:
        self.batcher = Proc(
            [*PROMPTBUS, "batcher", "-c", str(self.config)], self.work / "batcher.log"
        )
        return self.batcher

    def batch(self, batch_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/batches/{batch_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def submit(self, lines: list[dict[str, Any]]) -> str:
        return self.submit_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    def submit_bytes(self, data: bytes, endpoint: str = "/v1/chat/completions") -> str:
        """Upload ``data`` as a batch input file and create the batch: its id."""
        upload = self.http.post(
            "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
        )
        assert upload.status_code == 200, upload.text
        created = self.http.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": endpoint,
                "completion_window": "24h",
            },
        )
        assert created.status_code == 200, created.text
        return str(created.json()["id"])

    def wait_until(
        self, batch_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        batch = self.batch(batch_id)
        while not check(batch):
            if time.monotonic() > deadline:
                logs = "\n".join(p.output()[-3000:] for p in [*self.workers, self.batcher] if p)
                raise TimeoutError(f"batch stuck: {batch}\n{logs}")
            time.sleep(0.1)
            batch = self.batch(batch_id)
        return batch

    def done(self, batch_id: str, timeout: float = 90) -> dict[str, Any]:
        terminal = {"completed", "failed", "cancelled", "expired"}
        return self.wait_until(batch_id, lambda b: b["status"] in terminal, timeout)

    def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        response = self.http.get(f"/v1/files/{file_id}/content")
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines()]


def chat_line(custom_id: str, model: str = "batch-gpt", **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": custom_id}], **extra},
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchEnv]:
    work = tmp_path_factory.mktemp("batches")
    nats = EmbeddedNats(
        work / "nats",
        log_file=work / "nats.log",
        credentials_dir=bus.CREDENTIALS.directory,
        brokers=bus.BROKERS,
    ).start()
    upstream_port, ingress_port = free_port(), free_port()
    config = work / "batches.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": nats.url, **bus.config_section()},
                "worker": {"ack_wait_s": 3, "heartbeat_s": 0.5, "presence_ttl_s": 3},
                "batch": {"lease_ttl_s": 3},
                "model_list": [
                    {
                        "model_name": "batch-gpt",
                        "deployments": [
                            {"provider": "mock", "mock_latency_ms": 40, "max_concurrency": 16}
                        ],
                    },
                    {
                        "model_name": "batch-slow",
                        "deployments": [
                            {"provider": "mock", "mock_latency_ms": 300, "max_concurrency": 8}
                        ],
                    },
                    {
                        "model_name": "batch-embed",
                        "mode": "embeddings",
                        "deployments": [{"provider": "mock", "max_concurrency": 8}],
                    },
                    {
                        "model_name": "batch-upstream",
                        "deployments": [
                            {
                                "provider": "openai",
                                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                                "responses_api": "native",
                                "retry": {"max_attempts": 1},
                                "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                            }
                        ],
                    },
                ],
            }
        )
    )
    procs: list[Proc] = []
    result: BatchEnv | None = None
    try:
        upstream = Proc(
            [*PROMPTBUS, "mock-upstream", "--port", str(upstream_port)], work / "upstream.log"
        )
        procs.append(upstream)
        wait_port("127.0.0.1", upstream_port, upstream)
        ingress = Proc(
            [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(ingress_port)],
            work / "ingress.log",
        )
        procs.append(ingress)
        wait_http(f"http://127.0.0.1:{ingress_port}/readyz", ingress)
        result = BatchEnv(work, nats, config, f"http://127.0.0.1:{ingress_port}")
        result.start_worker()
        result.start_worker()
        result.start_batcher()
        yield result
    finally:
        if result is not None:
            result.http.close()
            procs.extend([*result.workers, *([result.batcher] if result.batcher else [])])
        for proc in reversed(procs):
            proc.stop()
        nats.stop()


def assert_exactly_once(env: BatchEnv, batch: dict[str, Any], ids: list[str]) -> None:
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": len(ids), "completed": len(ids), "failed": 0}
    output = env.file_lines(batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == sorted(ids)
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == f"mock reply to: {line['custom_id']}"
    assert batch["error_file_id"] is None


# ---------------------------------------------------------------- the openai SDK


def test_openai_sdk_batch_flow(env: BatchEnv) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{env.ingress}/v1", api_key="unused", max_retries=0)
    lines = [chat_line(f"req-{i}") for i in range(20)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = client.files.create(file=("prompts.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    assert client.files.retrieve(uploaded.id).filename == "prompts.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "sdk"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "sdk"}
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (20, 20)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.output_file_id is not None
    output = client.files.content(batch.output_file_id).text.splitlines()
    parsed = [json.loads(line) for line in output]
    assert sorted(p["custom_id"] for p in parsed) == sorted(f"req-{i}" for i in range(20))
    assert all(p["response"]["body"]["object"] == "chat.completion" for p in parsed)

    second = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    older = client.batches.list(limit=1, after=second.id)
    assert [b.id for b in older.data] == [batch.id]
    ids = [b.id for b in client.batches.list(limit=1)]  # the SDK pages through them all
    assert ids.index(second.id) < ids.index(batch.id)
    env.done(second.id)

    listed = {f.id: f for f in client.files.list(purpose="batch")}
    assert listed[uploaded.id].filename == "prompts.jsonl"
    assert batch.output_file_id not in listed  # purpose batch_output
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_an_embeddings_batch(env: BatchEnv) -> None:
    """Lines calling /v1/embeddings, as OpenAI allows: one embedding list per line; a
    chat line, or a chat model, in an embeddings batch fails alone."""
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "batch-embed", "input": [f"text {i}", "more"]},
        }
        for i in range(6)
    ]
    lines.append(chat_line("a-chat-line"))
    lines.append(
        {
            "custom_id": "chat-model",
            "url": "/v1/embeddings",
            "body": {"model": "batch-gpt", "input": "x"},
        }
    )
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    batch = env.done(env.submit_bytes(data, endpoint="/v1/embeddings"))
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 8, "completed": 6, "failed": 2}
    output = env.file_lines(batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == [f"e-{i}" for i in range(6)]
    for line in output:
        body = line["response"]["body"]
        assert body["object"] == "list" and len(body["data"]) == 2
        assert len(body["data"][0]["embedding"]) == 256
    errors = {line["custom_id"]: line for line in env.file_lines(batch["error_file_id"])}
    assert errors["a-chat-line"]["error"]["code"] == "invalid_url"
    assert errors["chat-model"]["error"]["code"] == "wrong_endpoint"


def test_a_text_completions_batch(env: BatchEnv) -> None:
    """Lines calling legacy /v1/completions, as OpenAI allows, answered by the mock and
    by an OpenAI-compatible upstream; a streamed line and a chat line fail alone."""
    lines = [
        {
            "custom_id": f"t-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": model, "prompt": f"prompt {i}"},
        }
        for i, model in enumerate(["batch-gpt", "batch-upstream"] * 3)
    ]
    lines.append(chat_line("a-chat-line"))
    lines.append(
        {
            "custom_id": "streamed",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "batch-gpt", "prompt": "x", "stream": True},
        }
    )
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    batch = env.done(env.submit_bytes(data, endpoint="/v1/completions"))
    assert batch["request_counts"] == {"total": 8, "completed": 6, "failed": 2}, batch
    output = {line["custom_id"]: line for line in env.file_lines(batch["output_file_id"])}
    assert sorted(output) == [f"t-{i}" for i in range(6)]
    for custom_id, line in output.items():
        body = line["response"]["body"]
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == f"mock completion of: prompt {custom_id[2:]}"
    errors = {line["custom_id"]: line for line in env.file_lines(batch["error_file_id"])}
    assert errors["a-chat-line"]["error"]["code"] == "invalid_url"
    assert "Streaming is not supported" in errors["streamed"]["error"]["message"]


def test_a_responses_batch(env: BatchEnv) -> None:
    """Lines calling /v1/responses, answered through chat (the mock) and natively (an
    upstream with the API); each line is stateless, so one that names a previous
    response, or asks to be stored, fails alone, as a streamed one does."""
    lines = [
        {
            "custom_id": f"r-{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": model, "input": f"question {i}", "instructions": "be brief"},
        }
        for i, model in enumerate(["batch-gpt", "batch-upstream"] * 3)
    ]
    refused = {
        "chained": {"previous_response_id": "resp_1"},
        "stored": {"store": True},
        "streamed": {"stream": True},
    }
    for custom_id, extra in refused.items():
        body = {"model": "batch-gpt", "input": "x"} | extra
        lines.append(
            {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}
        )
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    batch = env.done(env.submit_bytes(data, endpoint="/v1/responses"))
    assert batch["request_counts"] == {"total": 9, "completed": 6, "failed": 3}, batch
    output = {line["custom_id"]: line for line in env.file_lines(batch["output_file_id"])}
    assert sorted(output) == [f"r-{i}" for i in range(6)]
    for custom_id, line in output.items():
        body = line["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["store"] is False and body["instructions"] == "be brief"
        assert body["output"][0]["content"][0]["text"] == f"mock reply to: question {custom_id[2:]}"
        assert body["usage"]["output_tokens"] == 5
    errors = {line["custom_id"]: line for line in env.file_lines(batch["error_file_id"])}
    for custom_id, name in [("chained", "previous_response_id"), ("stored", "store")]:
        assert errors[custom_id]["error"]["code"] == "unsupported_parameter"
        assert f"`{name}` is not supported in batches" in errors[custom_id]["error"]["message"]
    assert "Streaming is not supported" in errors["streamed"]["error"]["message"]


def test_sdk_errors_are_openai_shaped(env: BatchEnv) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{env.ingress}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-doesnotexist")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id="file-x",
            endpoint="/v1/moderations",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert bad.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")


# ---------------------------------------------------------------- validation, failures


def test_malformed_file_fails_validation_with_the_reason(env: BatchEnv) -> None:
    good = json.dumps(chat_line("a")).encode()
    for data, code, line in [
        (good + b"\nnot json\n", "invalid_json_line", 2),
        (good + b'\n{"messages": []}\n', "missing_custom_id", 2),
        (good + b"\n" + good + b"\n", "duplicate_custom_id", 2),
        (b"\n\n", "empty_file", None),
    ]:
        upload = env.http.post(
            "/v1/files", files={"file": ("bad.jsonl", data)}, data={"purpose": "batch"}
        )
        created = env.http.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        batch = env.done(created.json()["id"])
        assert batch["status"] == "failed", batch
        error = batch["errors"]["data"][0]
        assert (error["code"], error["line"]) == (code, line), error
        assert error["message"]


def test_validation_reports_every_kind_of_problem(env: BatchEnv) -> None:
    """The issue's file: a line, one without custom_id, one not JSON, the first again.
    All three problems are reported, and a failed batch counts no requests."""
    a = json.dumps(chat_line("a")).encode()
    data = b"\n".join([a, b'{"method": "POST"}', b"not json", a]) + b"\n"
    batch = env.done(env.submit_bytes(data))
    assert batch["status"] == "failed"
    found = [(e["code"], e["line"]) for e in batch["errors"]["data"]]
    assert found == [("missing_custom_id", 2), ("invalid_json_line", 3), ("duplicate_custom_id", 4)]
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


def test_a_line_too_deep_or_too_large_fails_alone(env: BatchEnv) -> None:
    """JSON nested thousands deep, or a request NATS could not carry, is that line's
    error in the error file; the batch and every other line go on."""
    head = json.dumps(chat_line("deep"))[: -len("}}")]  # the body object left open
    deep = (head + ', "tool_choice": ' + "[" * 3000 + "]" * 3000 + "}}").encode()
    large_line = chat_line("large")
    large_line["body"]["messages"][0]["content"] = "y" * (8 * 1024 * 1024)
    large = json.dumps(large_line).encode()
    data = b"\n".join([json.dumps(chat_line("ok")).encode(), deep, large]) + b"\n"
    batch = env.done(env.submit_bytes(data))
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = env.http.get(f"/v1/files/{batch['error_file_id']}/content").text.splitlines()
    codes = {json.loads(line)["custom_id"]: json.loads(line)["error"]["code"] for line in errors}
    assert codes == {"deep": "json_too_deep", "large": "request_too_large"}


def test_line_errors_and_upstream_failures_go_to_the_error_file(env: BatchEnv) -> None:
    lines = [
        chat_line("ok-1"),
        chat_line("upstream-ok", model="batch-upstream"),
        chat_line("upstream-fails", model="batch-upstream", metadata={"mock_status": "400"}),
        chat_line("unknown-model", model="no-such-model"),
        chat_line("bad-temperature", temperature=7),
        chat_line("streamed", stream=True),
        {**chat_line("wrong-url"), "url": "/v1/embeddings"},
        chat_line("ok-2"),
    ]
    batch = env.done(env.submit(lines))
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 8, "completed": 3, "failed": 5}
    output = {line["custom_id"]: line for line in env.file_lines(batch["output_file_id"])}
    assert set(output) == {"ok-1", "ok-2", "upstream-ok"}
    errors = {line["custom_id"]: line for line in env.file_lines(batch["error_file_id"])}
    assert set(errors) == {
        "upstream-fails",
        "unknown-model",
        "bad-temperature",
        "streamed",
        "wrong-url",
    }
    failed = errors["upstream-fails"]
    assert failed["error"] is None
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["type"] == "upstream_error"
    assert errors["unknown-model"]["response"] is None
    assert errors["unknown-model"]["error"]["code"] == "model_not_found"
    assert "temperature" in errors["bad-temperature"]["error"]["message"]
    assert errors["wrong-url"]["error"]["code"] == "invalid_url"


def test_any_custom_id_comes_back_verbatim_through_the_batch_lane_stream(env: BatchEnv) -> None:
    """custom_ids travel in a header (Pb-Custom-Id, percent-encoded) and come back on the
    reply, since every line of a batch shares one reply subject. Lines wait in the batch
    lane's own stream, not in the interactive one."""
    import asyncio

    async def last_seqs() -> tuple[int, int]:
        nc = await bus.connect(env.nats.url)
        js = nc.jetstream()
        main, bulk = await js.stream_info("PB_REQUESTS"), await js.stream_info("PB_REQUESTS_BULK")
        await nc.close()
        return main.state.last_seq, bulk.state.last_seq

    awkward = ["a.b.c", "with space", "ünïcødé ✓", "100%", "tab\there", 'quote"s', "*", ">"]
    awkward += ["line\nbreak", "slash/and\\back", "x" * 300, "-7"]
    lines = [chat_line(custom_id) for custom_id in awkward]
    lines.append(chat_line("bad model. ✓", model="no-such-model"))
    main_before, bulk_before = asyncio.run(last_seqs())
    batch = env.done(env.submit(lines))
    main_after, bulk_after = asyncio.run(last_seqs())
    assert batch["request_counts"] == {"total": 13, "completed": 12, "failed": 1}, batch
    output = env.file_lines(batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == sorted(awkward)
    for line in output:
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == f"mock reply to: {line['custom_id']}"
    [error] = env.file_lines(batch["error_file_id"])
    assert error["custom_id"] == "bad model. ✓"
    assert error["error"]["code"] == "model_not_found"
    # the 12 lines that could run, in the lane's stream: blocks of 2 (an eighth of 16 slots)
    assert bulk_after - bulk_before == 6
    assert main_after == main_before


# ---------------------------------------------------------------- crashes and cancel


def start_midway(env: BatchEnv, prefix: str) -> tuple[str, list[str]]:
    """A batch of 1,000 lines, returned once 200 to 900 of them are answered: the moment
    the crash tests strike."""
    ids = [f"{prefix}-{i}" for i in range(1000)]
    batch_id = env.submit([chat_line(i) for i in ids])
    midway = env.wait_until(batch_id, lambda b: b["request_counts"]["completed"] >= 200)
    assert midway["request_counts"]["completed"] < 900, "the batch ended before the crash"
    return batch_id, ids


def test_worker_sigkilled_mid_batch_loses_and_duplicates_nothing(env: BatchEnv) -> None:
    batch_id, ids = start_midway(env, "kill")
    victim = env.workers[0]
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    batch = env.done(batch_id)
    env.start_worker()
    assert_exactly_once(env, batch, ids)


def test_nats_server_restarted_mid_batch(env: BatchEnv) -> None:
    batch_id, ids = start_midway(env, "restart")
    env.nats.stop()
    time.sleep(1.0)
    env.nats.start()
    batch = env.done(batch_id, timeout=120)
    assert_exactly_once(env, batch, ids)


def test_batcher_sigkilled_mid_batch_resumes(env: BatchEnv) -> None:
    batch_id, ids = start_midway(env, "batcher")
    assert env.batcher is not None
    env.batcher.signal(signal.SIGKILL)
    env.batcher.popen.wait()
    env.start_batcher()
    batch = env.done(batch_id)
    assert_exactly_once(env, batch, ids)


def test_two_batchers_run_a_batch_once_and_the_survivor_takes_over(env: BatchEnv) -> None:
    """A second batcher leaves a batch to the one holding its lease, and takes it over
    when that one is killed: every line still answered exactly once."""
    import asyncio

    async def holder(batch_id: str) -> str:
        nc = await bus.connect(env.nats.url)
        entry = await (await nc.jetstream().key_value("pb_batches")).get(f"run.{batch_id}")
        await nc.close()
        assert entry.value
        return str(json.loads(entry.value)["owner"])

    assert env.batcher is not None
    first = env.batcher
    second = env.start_batcher()
    batch_id, ids = start_midway(env, "ha")
    pid = int(asyncio.run(holder(batch_id)).split(":")[1])
    victim = first if pid == first.popen.pid else second
    survivor = second if victim is first else first
    env.batcher = survivor  # the one the other tests (and the teardown) know
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    assert pid == victim.popen.pid
    assert f"{batch_id}: resuming" not in survivor.output()  # it left the batch alone
    batch = env.done(batch_id, timeout=120)
    assert_exactly_once(env, batch, ids)
    assert f"run.{batch_id}: taking over" in survivor.output()  # its lease (run.<id>)


def test_a_batch_past_its_window_expires_with_unanswered_lines_in_the_error_file(
    env: BatchEnv,
) -> None:
    """As OpenAI does: what finished is in the output file, every line never answered is
    in the error file with code batch_expired, and nothing is in both."""
    import asyncio

    async def expire_now(batch_id: str) -> None:
        nc = await bus.connect(env.nats.url)
        kv = await nc.jetstream().key_value("pb_batches")
        entry = await kv.get(batch_id)
        assert entry.value
        record = json.loads(entry.value)
        record["batch"]["expires_at"] = int(time.time())
        await kv.update(batch_id, json.dumps(record).encode(), last=entry.revision)
        await nc.close()

    ids = [f"expiring-{i}" for i in range(60)]  # 300 ms each, 8 at a time: ~2.3 s
    batch_id = env.submit([chat_line(i, model="batch-slow") for i in ids])
    env.wait_until(batch_id, lambda b: b["request_counts"]["completed"] >= 8)
    asyncio.run(expire_now(batch_id))
    batch = env.done(batch_id)
    assert batch["status"] == "expired" and batch["expired_at"], batch
    output = env.file_lines(batch["output_file_id"])
    errors = env.file_lines(batch["error_file_id"])
    answered = {line["custom_id"] for line in output}
    expired = {line["custom_id"] for line in errors}
    assert len(answered) == len(output) >= 8 and len(expired) == len(errors) >= 1
    assert answered | expired == set(ids) and not answered & expired
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    counts = batch["request_counts"]
    assert counts == {"total": 60, "completed": len(output), "failed": len(errors)}


def test_a_batcher_dying_while_finalizing_is_finished_by_the_next(env: BatchEnv) -> None:
    """The record says finalizing and the results are still in the stream: the next run
    reads them all again and writes the files, each line once."""
    import asyncio

    from broker.batches.batcher import BatchRun
    from broker.batches.store import BatchStore
    from schemas.settings import load_config

    assert env.batcher is not None
    env.batcher.signal(signal.SIGSTOP)  # this test runs the batch itself, up to a crash
    try:
        ids = [f"fin-{i}" for i in range(300)]
        batch_id = env.submit([chat_line(i) for i in ids])

        async def run_until_finalize() -> None:
            config = load_config(env.config)
            nc = await bus.connect(env.nats.url)
            try:
                store = await BatchStore.open(nc.jetstream(), config)
                run = BatchRun(config, nc, store, batch_id)

                async def crash(*_: object) -> None:
                    raise RuntimeError("the batcher died while finalizing")

                run.finalize = crash  # type: ignore[method-assign]
                with pytest.raises(RuntimeError, match="finalizing"):
                    await run.run()
            finally:
                await nc.close()

        asyncio.run(run_until_finalize())
        assert env.batch(batch_id)["status"] == "finalizing"
    finally:
        env.batcher.signal(signal.SIGCONT)
    batch = env.done(batch_id)
    assert_exactly_once(env, batch, ids)


def test_cancel_mid_batch(env: BatchEnv) -> None:
    ids = [f"cancel-{i}" for i in range(400)]
    batch_id = env.submit([chat_line(i, model="batch-slow") for i in ids])
    env.wait_until(batch_id, lambda b: b["request_counts"]["completed"] >= 20)
    cancelled = env.http.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
    batch = env.done(batch_id)
    assert batch["status"] == "cancelled" and batch["cancelled_at"]
    counts = batch["request_counts"]
    assert 20 <= counts["completed"] < 400 and counts["failed"] == 0
    output = env.file_lines(batch["output_file_id"])
    assert len(output) == counts["completed"]
    assert len({line["custom_id"] for line in output}) == len(output)
    again = env.http.post(f"/v1/batches/{batch_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    # the withdrawn lines are not run later: the slow model's queue is empty
    time.sleep(1.0)
    assert env.batch(batch_id)["request_counts"] == counts


# ---------------------------------------------------------------- CLI


def run_cli(env: BatchEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "batch", "-c", str(env.config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_submit_bare_lines_wait_and_resume(env: BatchEnv, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"custom_id": f"cli-{i}", "messages": [{"role": "user", "content": "hi"}]})
            + "\n"
            for i in range(50)
        )
    )
    out = tmp_path / "results.jsonl"
    first = run_cli(env, "submit", str(prompts), "--model", "batch-gpt", "--wait", "-o", str(out))
    assert first.returncode == 0, first.stderr
    batch_id = first.stdout.split()[1]
    assert "50/50 done" in first.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"cli-{i}" for i in range(50))

    again = run_cli(env, "submit", str(prompts), "--model", "batch-gpt")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[1] == batch_id
    assert "resuming" in again.stderr

    status = subprocess.run(  # the options may follow the action too
        [sys.executable, "-m", "cli.main", "batch", "status", batch_id, "-c", str(env.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["status"] == "completed"
    listing = run_cli(env, "list")
    assert batch_id in listing.stdout
    fetched = tmp_path / "fetched.jsonl"
    results = run_cli(env, "results", batch_id, "-o", str(fetched))
    assert results.returncode == 0, results.stderr
    assert fetched.read_text() == out.read_text()
    refused = run_cli(env, "cancel", batch_id)
    assert refused.returncode != 0 and "completed" in refused.stderr


# ---------------------------------------------------------------- the NATS contract


def test_raw_lane_results_are_kept_for_a_submitter_that_is_not_listening(env: BatchEnv) -> None:
    """docs/subjects.md, "Bulk work": publish to pb.bulk.<model> with one pb.bres reply
    subject for the whole job, disconnect, and read the results back later with bare
    nats-py: each result names its request by the echoed request id and custom id."""
    import asyncio

    async def scenario() -> list[tuple[str, str, dict[str, Any]]]:
        nc = await bus.connect(env.nats.url)
        js = nc.jetstream()
        for i in range(5):
            body = {"model": "batch-gpt", "messages": [{"role": "user", "content": f"raw {i}"}]}
            await js.publish(
                "pb.bulk.batch-gpt",
                json.dumps(body).encode(),
                headers={
                    "Pb-Reply-To": "pb.bres.rawjob",
                    "Pb-Request-Id": f"rawjob-{i}",
                    "Pb-Custom-Id": f"r{i}",
                    "Nats-Msg-Id": f"rawjob:{i}",
                },
            )
        await nc.close()  # nobody listens while the workers answer
        await asyncio.sleep(1.0)
        nc = await bus.connect(env.nats.url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("pb.bres.rawjob", stream="PB_REQUESTS_RESULTS")
        msgs = []
        while len(msgs) < 5:
            msgs += await sub.fetch(5 - len(msgs), timeout=10)
        await js.purge_stream("PB_REQUESTS_RESULTS", subject="pb.bres.rawjob")
        await nc.close()
        return [(m.subject, dict(m.headers or {}), json.loads(m.data)) for m in msgs]

    results = asyncio.run(scenario())
    assert {subject for subject, _, _ in results} == {"pb.bres.rawjob"}
    assert sorted(headers["Pb-Custom-Id"] for _, headers, _ in results) == [
        f"r{i}" for i in range(5)
    ]
    for _, headers, body in results:
        index = headers["Pb-Request-Id"].removeprefix("rawjob-")
        assert headers["Pb-Custom-Id"] == f"r{index}"
        assert headers["Pb-Kind"] == "response"
        assert body["choices"][0]["message"]["content"] == f"mock reply to: raw {index}"
