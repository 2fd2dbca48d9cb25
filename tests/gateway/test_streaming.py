"""``stream: true`` relays a job's token stream and always ends with what the registry recorded.

The gateway runs in-process over a real SQLite registry and a real Redis; the
test plays the worker: it publishes deltas (including a re-run's), records the
outcome, then announces it, as workers/runtime.py does.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from registry import jobs
from registry.db import transaction
from registry.models import Job
from tests.gateway.test_bad_input import make_gateway
from tests.gateway.test_long_poll import record
from workers.contract.names import queue_name
from workers.contract.notify import Notifier, push_client
from workers.contract.streams import Delta, DeltaWriter

REQUEST = {"model": "upper", "prompt": "hello world", "max_tokens": 32, "stream": True}


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    with make_gateway(tmp_path, redis_url, wait_fallback_s=30) as client:  # type: ignore[arg-type]
        yield client


def stream_on_thread(client: TestClient, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        with client.stream("POST", "/v1/completions", json=body) as resp:
            out["status"] = resp.status_code
            out["lines"] = [line for line in resp.iter_lines() if line]

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def accepted_job(client: TestClient) -> str:
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sessions() as session:
            if (job_id := session.scalar(select(Job.id))) is not None:
                return str(job_id)
        time.sleep(0.01)
    raise AssertionError("the request was not accepted as a job")


def queued_message(redis_url: str, adapter: str) -> bytes:
    """The adapter queue's first message: published just after the job's row is committed, so a
    test that saw the row waits for it (under a loaded machine the gap was long enough to fail)."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (message := client.lindex(queue_name(adapter), 0)) is not None:
            return bytes(message)
        time.sleep(0.01)
    raise AssertionError(f"no message on {adapter}'s queue")


def events(lines: list[str]) -> list[Any]:
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def test_the_deltas_are_relayed_as_chunks_and_the_recorded_result_completes_them(
    client: TestClient, redis_url: str
) -> None:
    thread, out = stream_on_thread(client, {**REQUEST, "stream_options": {"include_usage": True}})
    job_id = accepted_job(client)
    push = push_client(redis_url)
    write = DeltaWriter(push)
    write([Delta(job_id, 0, "HEL")])
    write([Delta(job_id, 0, "HE")])  # the job ran again from the start: nothing new
    write([Delta(job_id, 2, "LLO")])
    record(client.app.state.sessions, job_id, "HELLO WORLD")  # type: ignore[attr-defined]
    Notifier(push).recorded([job_id], streamed=[job_id])
    thread.join(15)
    assert out["status"] == 200
    chunks = events(out["lines"])
    assert chunks[-1] == "[DONE]"
    choices = [c["choices"][0] for c in chunks[:-1] if c["choices"]]
    assert [c["text"] for c in choices] == ["HEL", "LO", " WORLD", ""]
    assert choices[-1]["finish_reason"] == "stop"
    assert chunks[-2]["usage"]["completion_tokens"] == len("HELLO WORLD")


def test_the_job_message_asks_the_worker_to_stream(client: TestClient, redis_url: str) -> None:
    thread, _ = stream_on_thread(client, REQUEST)
    job_id = accepted_job(client)
    envelope = json.loads(queued_message(redis_url, "upper"))
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    assert args[0]["job_id"] == job_id and args[0]["stream"] is True
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        jobs.fail_one(session, job_id=job_id, worker="w", code="worker_error", message="test over")
    Notifier(push_client(redis_url)).recorded([job_id], streamed=[job_id])
    thread.join(15)


def test_a_rerun_that_disagrees_with_what_was_sent_ends_with_an_error_event(client: TestClient, redis_url: str) -> None:
    thread, out = stream_on_thread(client, REQUEST)
    job_id = accepted_job(client)
    push = push_client(redis_url)
    DeltaWriter(push)([Delta(job_id, 0, "HEL")])
    DeltaWriter(push)([Delta(job_id, 0, "XYZ")])  # a sampled re-run after its worker died
    record(client.app.state.sessions, job_id, "XYZZY")  # type: ignore[attr-defined]
    Notifier(push).recorded([job_id], streamed=[job_id])
    thread.join(15)
    chunks = events(out["lines"])
    assert chunks[0]["choices"][0]["text"] == "HEL"
    assert chunks[-1]["error"]["code"] == "stream_diverged"  # said, not silently cut


def test_a_job_that_fails_before_any_text_answers_with_its_http_error(client: TestClient, redis_url: str) -> None:
    thread, out = stream_on_thread(client, REQUEST)
    job_id = accepted_job(client)
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        jobs.fail_one(session, job_id=job_id, worker="w", code="adapter_load_failed", message="no such file")
    Notifier(push_client(redis_url)).recorded([job_id], streamed=[job_id])
    thread.join(15)
    assert out["status"] == 502
    assert json.loads(out["lines"][0])["error"]["code"] == "adapter_load_failed"
