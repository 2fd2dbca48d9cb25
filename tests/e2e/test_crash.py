"""kill -9 workers in the middle of batches: every accepted job still ends exactly once.

Real processes: Redis, a SQLite registry, the gateway and two Celery
workers; workers are killed with SIGKILL several times and restarted. Their
reserved messages come back after the visibility timeout because their
heartbeats stop; results are recorded exactly once however often a job runs.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from registry.models import Job
from tests.fixtures.stack import pipeline
from workers.contract.celery_app import Role, make_celery
from workers.contract.settings import QueueSettings
from workers.demo_model.skills import SKILLS

pytestmark = [pytest.mark.e2e]

ADAPTERS = [f"{skill}-{i}" for i, skill in enumerate(sorted(SKILLS) * 3)][:10]  # 10 names over the 4 skills
JOBS = 500
WORKER_ENV = {"LORAQ_VISIBILITY_TIMEOUT_S": "6"}


def test_killed_workers_lose_nothing_and_record_every_job_once(tmp_path: Path, redis_url: str) -> None:
    with pipeline(tmp_path, redis_url) as p:
        p.spawn_worker("w1", **WORKER_ENV)
        p.spawn_worker("w2", **WORKER_ENV)
        for name in ADAPTERS:
            p.register_demo_adapter(name, name.rsplit("-", 1)[0])
        rng = random.Random(9)
        ids = [p.submit(rng.choice(ADAPTERS), f"job {i} ok", max_tokens=16) for i in range(JOBS)]

        kills = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = p.statuses()
            if sum(done.get(s, 0) for s in ("succeeded", "failed", "cancelled")) == JOBS:
                break
            if kills < 3 and done.get("succeeded", 0) > 60 * (kills + 1):
                victim = f"w{kills % 2 + 1}"
                os.kill(p.stack.procs[victim].pid, signal.SIGKILL)
                p.stack.procs[victim].wait(10)
                kills += 1
                p.spawn_worker(victim, **WORKER_ENV)
            time.sleep(0.5)
        assert kills == 3, f"only {kills} kills happened: {p.statuses()}"
        final = p.statuses()
        assert final == {"succeeded": JOBS}, final

        with p.sessions() as s:
            rows = {j.id: j for j in s.scalars(select(Job))}
        assert len(rows) == JOBS
        assert any(j.attempts > 1 for j in rows.values()), "no job was running when a worker died"
        celery = make_celery(QueueSettings(redis_url=redis_url), role=Role.WORKER)  # reads results
        # A redelivered message (its worker was killed after recording) may still be running its
        # duplicate, which writes STARTED before it answers with the recorded result: wait for it.
        for job_id in ids:
            result = celery.AsyncResult(job_id)
            deadline = time.monotonic() + 60
            while result.state != "SUCCESS" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert result.state == "SUCCESS", (job_id, result.state)
            assert result.result["status"] == "succeeded"
            assert result.result["text"] == rows[job_id].text
