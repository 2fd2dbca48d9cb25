"""Flower lists adapter queues that no worker consumes (the sticky-worker gap).

Real Flower process (``python -m gateway.flower``), real Redis, real
registry; no worker runs, so stock Flower would list only its default queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.processes import free_port
from registry import adapters, keys
from registry.artifacts.checks import validate_adapter
from registry.db import make_engine, session_factory, transaction
from registry.migrate import upgrade
from registry.schemas import Priority, SamplingParams, TaskJob
from workers.contract.messages import fail_fast_publisher
from workers.contract.settings import QueueSettings
from workers.demo_model import DEMO_BASE, adapter_dir

AUTH = ("ops", "pw")


@pytest.fixture
def registry_with_waiting_jobs(tmp_path: Path, redis_url: str) -> str:
    url = f"sqlite:///{tmp_path / 'loraq.db'}"
    upgrade(url)
    redis.Redis.from_url(redis_url).flushdb()  # the Redis server is shared by the session
    info = validate_adapter(str(adapter_dir("upper")), base_dir=DEMO_BASE, max_bytes=1 << 30)
    engine = make_engine(url)
    with transaction(session_factory(engine)) as session:
        owner = keys.ensure_tenant(session, name="admin", is_admin=True)
        base = adapters.ensure_base_model(session, name="demo", path=str(DEMO_BASE))
        for name in ("upper", "waiting"):
            adapters.register_version(
                session, name=name, uri=info.path.as_uri(), info=info, base=base, owner=owner, public=True
            )
    engine.dispose()
    publisher = fail_fast_publisher(QueueSettings(redis_url=redis_url))
    for i in range(3):
        task = TaskJob(
            job_id=f"job-{i}",
            adapter="waiting",
            version_id=2,
            version=1,
            uri="file:///x",
            sha256="0" * 64,
            prompt="hi",
            sampling=SamplingParams(),
            enqueued_at=time.time(),
        )
        publisher.publish(task, priority=Priority.INTERACTIVE)
    return url


@pytest.fixture
def flower(registry_with_waiting_jobs: str, redis_url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LORAQ_DATABASE_URL": registry_with_waiting_jobs}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.flower",
            f"--broker={redis_url}",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={AUTH[0]}:{AUTH[1]}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_flower_lists_every_routed_adapter_queue_with_its_length(flower: str) -> None:
    resp = httpx.get(f"{flower}/api/queues/length", auth=AUTH, timeout=10)
    assert resp.status_code == 200
    lengths = {q["name"]: q["messages"] for q in resp.json()["active_queues"]}
    assert lengths["lora.waiting"] == 3
    assert lengths["lora.upper"] == 0


def test_flower_refuses_without_basic_auth(flower: str) -> None:
    assert httpx.get(f"{flower}/api/queues/length", timeout=10).status_code == 401
