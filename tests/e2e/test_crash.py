"""kill -9 workers in the middle of batches: every accepted job still ends exactly once.

Real processes: Redis, a SQLite registry, the gateway and two Celery
workers; workers are killed with SIGKILL several times and restarted. Their
reserved messages come back after the visibility timeout because their
heartbeats stop; results are recorded exactly once however often a job runs.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from gateway.stack import Stack, StackConfig, free_port, wait_ready, worker_argv
from registry.db import make_engine, session_factory
from registry.migrate import upgrade
from registry.models import Job
from workers.celery_app import make_celery
from workers.demo_model.skills import SKILLS

pytestmark = [pytest.mark.e2e]

DEMO = Path(__file__).resolve().parents[2] / "workers" / "demo_model"
ADAPTERS = [f"{skill}-{i}" for i, skill in enumerate(sorted(SKILLS) * 3)][:10]  # 10 names over the 4 skills
JOBS = 500


def spawn_worker(stack: Stack, name: str) -> None:
    stack.spawn(name, worker_argv(name), extra_env={"LORAQ_BATCH_WAIT_MS": "20", "LORAQ_VISIBILITY_TIMEOUT_S": "6"})


def counts(sessions) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def test_killed_workers_lose_nothing_and_record_every_job_once(tmp_path: Path, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    db_url = f"sqlite:///{tmp_path / 'loraq.db'}"
    upgrade(db_url)
    stack = Stack(
        config=StackConfig(home=tmp_path, port=free_port(), flower_port=free_port(), log_dir=tmp_path / "logs"),
        redis_url=redis_url,
        database_url=db_url,
        admin_key=secrets.token_urlsafe(12),
        flower_auth="a:b",
    )
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    try:
        stack.spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "gateway.app:create_app",
                "--port",
                str(stack.config.port),
                "--log-level",
                "warning",
            ],
        )
        spawn_worker(stack, "w1")
        spawn_worker(stack, "w2")
        wait_ready(stack.url, timeout=60, stack=stack)
        http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30)
        for name in ADAPTERS:
            skill = name.rsplit("-", 1)[0]
            assert http.post("/v1/adapters", json={"name": name, "uri": str(DEMO / "adapters" / skill)}).is_success
        rng = random.Random(9)
        ids = []
        for i in range(JOBS):
            resp = http.post(
                "/v1/jobs", json={"adapter": rng.choice(ADAPTERS), "prompt": f"job {i} ok", "max_tokens": 16}
            )
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])

        kills = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = counts(sessions)
            if sum(done.get(s, 0) for s in ("succeeded", "failed", "cancelled")) == JOBS:
                break
            if kills < 3 and done.get("succeeded", 0) > 60 * (kills + 1):
                victim = f"w{kills % 2 + 1}"
                os.kill(stack.procs[victim].pid, signal.SIGKILL)
                stack.procs[victim].wait(10)
                kills += 1
                spawn_worker(stack, victim)
            time.sleep(0.5)
        assert kills == 3, f"only {kills} kills happened: {counts(sessions)}"
        final = counts(sessions)
        assert final == {"succeeded": JOBS}, final

        with sessions() as s:
            rows = {j.id: j for j in s.scalars(select(Job))}
        assert len(rows) == JOBS
        assert any(j.attempts > 1 for j in rows.values()), "no job was running when a worker died"
        celery = make_celery(redis_url)
        for job_id in ids:
            result = celery.AsyncResult(job_id)
            assert result.state == "SUCCESS", (job_id, result.state)
            assert result.result["status"] == "succeeded"
            assert result.result["text"] == rows[job_id].text
    finally:
        stack.stop()
        engine.dispose()
