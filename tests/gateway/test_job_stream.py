"""``GET /v1/jobs/{id}/stream`` and ``loraq jobs watch``: a job's text as it is generated, then its end.

The gateway runs in-process over real SQLite and Redis; the test plays the worker (deltas, the
recorded result, the notification), as tests/gateway/test_streaming.py does for the OpenAI routes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from gateway import cli_client
from gateway.cli import app
from tests.gateway.test_bad_input import make_gateway
from tests.gateway.test_long_poll import record
from workers.contract.notify import Notifier, push_client
from workers.contract.streams import Delta, DeltaWriter


@pytest.fixture
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    with make_gateway(tmp_path, redis_url, wait_fallback_s=30) as client:  # type: ignore[arg-type]
        yield client


def submit(client: TestClient) -> str:
    resp = client.post("/v1/jobs", json={"adapter": "upper", "prompt": "hello world", "max_tokens": 16, "stream": True})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def play_worker(client: TestClient, redis_url: str, job_id: str, *, deltas: list[tuple[int, str]], text: str) -> None:
    time.sleep(0.3)  # the reader is following by now (a delta written earlier is read from the stream anyway)
    push = push_client(redis_url)
    for pos, piece in deltas:
        DeltaWriter(push)([Delta(job_id, pos, piece)])
    record(client.app.state.sessions, job_id, text)  # type: ignore[attr-defined]
    Notifier(push).recorded([job_id], streamed=[job_id])


def sse(client: TestClient, job_id: str, **headers: str) -> tuple[int, list[dict[str, Any]]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/stream", params={"timeout": 20}, headers=headers or None) as resp:
        lines = [line for line in resp.iter_lines() if line]
        if resp.status_code != 200:
            return resp.status_code, [json.loads(lines[0])]
    return resp.status_code, [json.loads(line.removeprefix("data: ")) for line in lines]


def test_the_text_arrives_in_pieces_and_the_stream_ends_with_the_recorded_job(
    client: TestClient, redis_url: str
) -> None:
    job_id = submit(client)
    worker = threading.Thread(
        target=play_worker,
        args=(client, redis_url, job_id),
        kwargs={"deltas": [(0, "HEL"), (3, "LO")], "text": "HELLO WORLD"},
    )
    worker.start()
    status, events = sse(client, job_id)
    worker.join()
    assert status == 200
    texts = [e["text"] for e in events if e["type"] == "delta"]
    assert texts[:2] == ["HEL", "LO"] and "".join(texts) == "HELLO WORLD"  # the rest comes from the record
    assert events[-1]["type"] == "end" and events[-1]["job"]["status"] == "succeeded"


def test_another_tenants_job_is_not_found(client: TestClient) -> None:
    job_id = submit(client)
    key = client.post("/v1/admin/keys", json={"tenant": "globex"}).json()["key"]
    status, (body,) = sse(client, job_id, Authorization=f"Bearer {key}")
    assert (status, body["error"]["code"]) == (404, "job_not_found")


def test_loraq_jobs_watch_prints_the_text_and_exits_by_how_the_job_ended(
    client: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def in_process() -> cli_client.Client:
        c = cli_client.Client("http://testserver", None)
        c.http = client
        return c

    monkeypatch.setattr("gateway.cli.client", in_process)
    monkeypatch.setattr("gateway.cli.console", Console(width=200))
    job_id = submit(client)
    worker = threading.Thread(
        target=play_worker, args=(client, redis_url, job_id), kwargs={"deltas": [(0, "HEL")], "text": "HELLO"}
    )
    worker.start()
    result = CliRunner().invoke(app, ["jobs", "watch", job_id, "--timeout", "20"])
    worker.join()
    assert result.exit_code == 0, result.output
    assert "HELLO" in result.output and "succeeded" in result.output
