"""kill -9 of a worker in the middle of streamed completions: every stream still ends complete.

Real processes (Redis, SQLite, the gateway, a Celery worker). Sixteen streamed completions run
together; when the first text arrives the worker is killed and another started. Each stream
then ends with the re-run's recorded result (greedy: the same text, so what was sent is its
beginning and the relay completes it) or with an error event; never short and silent.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
from openai import OpenAI
from sqlalchemy import select

from registry.models import Job
from tests.fixtures.stack import pipeline

pytestmark = [pytest.mark.e2e]

WORKER_ENV = {"LORAQ_VISIBILITY_TIMEOUT_S": "6"}
PROMPTS = [f"Sticky workers swap adapters rarely {i}" for i in range(16)]


def test_streams_cut_by_a_killed_worker_end_with_the_rerun_result(tmp_path: Path, redis_url: str) -> None:
    with pipeline(tmp_path, redis_url) as p:
        p.register_demo_adapter("upper", "upper")
        p.spawn_worker("w1", **WORKER_ENV)
        client = OpenAI(base_url=f"{p.stack.url}/v1", api_key=p.stack.admin_key, timeout=120, max_retries=0)
        first_text = threading.Event()
        streams: dict[int, tuple[str, list[str], list[object]]] = {}

        def read(i: int) -> None:
            stream = client.completions.create(
                model="upper", prompt=PROMPTS[i], max_tokens=64, temperature=0, stream=True
            )
            texts: list[str] = []
            ends: list[object] = []
            job_id = ""
            for chunk in stream:
                job_id = str(uuid.UUID(chunk.id.removeprefix("cmpl-")))
                if chunk.choices and chunk.choices[0].text:
                    texts.append(chunk.choices[0].text)
                    first_text.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    ends.append(chunk.choices[0].finish_reason)
            streams[i] = (job_id, texts, ends)

        readers = [threading.Thread(target=read, args=(i,)) for i in range(len(PROMPTS))]
        for r in readers:
            r.start()
        assert first_text.wait(120), "no text streamed"
        os.kill(p.stack.procs["w1"].pid, signal.SIGKILL)
        p.stack.procs["w1"].wait(10)
        p.spawn_worker("w1", **WORKER_ENV)
        for r in readers:
            r.join(180)
        assert len(streams) == len(PROMPTS), f"streams that raised: {set(range(len(PROMPTS))) - set(streams)}"

        with p.sessions() as s:
            rows = {j.id: j for j in s.scalars(select(Job))}
        for i, (job_id, texts, ends) in streams.items():
            row = rows[job_id]
            assert row.status == "succeeded", (job_id, row.status)
            assert "".join(texts) == row.text, (i, texts, row.text)  # what was streamed is what was recorded
            assert ends, f"stream {i} ended without a finish reason"
        assert any(r.attempts > 1 for r in rows.values()), "the worker was not running any of them when killed"
