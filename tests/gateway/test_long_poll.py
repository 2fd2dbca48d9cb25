"""Long-poll wakes on the worker's completion notification; the registry read is only a fallback.

The gateway runs in-process over a real SQLite registry and a real Redis; the
test plays the worker: it records the outcome in the registry, then announces
it as a worker does (or does not, to lose the notification).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from registry import jobs
from registry.db import transaction
from registry.models import utcnow
from registry.schemas import FinishReason, GenerationResult
from tests.gateway.test_bad_input import make_gateway
from workers.contract.notify import Notifier, push_client

JOB = {"adapter": "upper", "prompt": "hello", "max_tokens": 8}


def record(sessions: sessionmaker[Session], job_id: str, text: str) -> None:
    """What a worker's runtime commits for a job that succeeded."""
    result = GenerationResult(text=text, finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=len(text))
    outcome = jobs.Outcome(
        job_id=job_id, worker="w", queue_wait_s=0.0, run_time_s=0.0, finished_at=utcnow(), result=result
    )
    with transaction(sessions) as session:
        jobs.record(session, [outcome])


def long_poll(client: TestClient, job_id: str, wait: float) -> tuple[threading.Thread, dict[str, Any]]:
    """``GET /v1/jobs/{id}?wait=`` on a thread; the dict gets its body and when it returned."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["body"] = client.get(f"/v1/jobs/{job_id}", params={"wait": wait}).json()
        out["returned"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def waiting(client: TestClient, count: int = 1) -> None:
    events = client.app.state.job_events  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while len(events.waiters) < count or not events.subscriber.connected:
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        time.sleep(0.01)


@contextmanager
def recorded_while_waiting(
    tmp_path: Path, redis_url: str, *, fallback_s: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A long-poll waits on a job whose result is then committed, not yet announced: the body announces it
    or not. Yields the job id and the long-poll's outcome (filled once the body is done)."""
    with make_gateway(tmp_path, redis_url, wait_fallback_s=fallback_s) as client:  # type: ignore[arg-type]
        job_id = client.post("/v1/jobs", json=JOB).json()["id"]
        thread, out = long_poll(client, job_id, wait=20)
        waiting(client)
        record(client.app.state.sessions, job_id, "HELLO")  # type: ignore[attr-defined]
        out["recorded"] = time.monotonic()
        yield job_id, out
        thread.join(10)
        out["sweeps"] = client.app.state.job_events.sweeps  # type: ignore[attr-defined]
    assert out["body"]["status"] == "succeeded" and out["body"]["result"]["text"] == "HELLO"


def test_a_long_poll_returns_as_soon_as_the_worker_announces_the_result(tmp_path: Path, redis_url: str) -> None:
    with recorded_while_waiting(tmp_path, redis_url, fallback_s=30) as (job_id, out):
        announced = time.monotonic()
        Notifier(push_client(redis_url)).recorded([job_id])
    assert out["returned"] - announced < 0.5  # the notification, not the 30 s fallback read
    assert out["sweeps"] == 0


def test_a_lost_notification_is_made_up_for_by_the_fallback_read(tmp_path: Path, redis_url: str) -> None:
    with recorded_while_waiting(tmp_path, redis_url, fallback_s=0.5) as (_, out):
        pass  # never announced
    assert out["returned"] - out["recorded"] < 2.0


def test_many_waiting_requests_share_one_fallback_query(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url, wait_fallback_s=0.2) as client:  # type: ignore[arg-type]
        ids = [client.post("/v1/jobs", json=JOB).json()["id"] for _ in range(20)]
        polls = [long_poll(client, job_id, wait=1.5) for job_id in ids]
        waiting(client, count=len(ids))
        events = client.app.state.job_events  # type: ignore[attr-defined]
        before = events.sweeps
        time.sleep(1.0)
        sweeps = events.sweeps - before
        for thread, out in polls:
            thread.join(10)
            assert out["body"]["status"] == "queued"  # no worker: they time out
        assert 3 <= sweeps <= 6  # one query every 0.2 s for all twenty, not twenty per round
