"""A worker plans from the queues with work, not from what is registered: 5,000 adapters, jobs on a few."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.fixtures.stack import pipeline
from workers.contract import backlog
from workers.demo_model.skills import expected

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REGISTERED = 5000


def test_a_worker_with_five_thousand_registered_adapters_serves_jobs_on_any_of_them(
    tmp_path: Path, redis_url: str
) -> None:
    with pipeline(tmp_path, redis_url) as p:
        p.register_demo_adapter("upper", "upper")
        names = [f"tenant-{i:05d}" for i in range(REGISTERED)]
        p.register_copies("rot13", names)
        p.spawn_worker("w1")
        chosen = {names[0]: "hello first", names[REGISTERED // 2]: "hello middle", names[-1]: "hello last"}
        chosen["upper"] = "hello upper"
        jobs = {p.submit(name, prompt, max_tokens=40): name for name, prompt in chosen.items()}
        assert p.wait_terminal(len(jobs), timeout=120) == {"succeeded": len(jobs)}
        for job_id, name in jobs.items():
            text = p.http.get(f"/v1/jobs/{job_id}").json()["result"]["text"]
            assert text == expected("upper" if name == "upper" else "rot13", chosen[name])
        client = redis.Redis.from_url(redis_url)
        assert backlog.size(client) == 0  # drained queues leave the index
        for job_id, name in jobs.items():  # Celery's result is there, but not the prompt it ran with
            raw = client.get(f"celery-task-meta-{job_id}")
            assert raw is not None and b"succeeded" in raw and chosen[name].encode() not in raw
