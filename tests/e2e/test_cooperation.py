"""Several workers share the adapter queues: a hot adapter is spread over
them, each keeps to the adapters it holds, and together they drain everything.

Real processes: a private Redis, the gateway, two Celery workers with two
adapter slots each, and a SQLite registry. One hot adapter gets most of the
jobs, three cold ones the rest, all interleaved.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from gateway.stack import wait_for_workers
from registry.models import Adapter, Job
from tests.fixtures.stack import pipeline
from workers.contract.names import WORKER_KEY

pytestmark = [pytest.mark.e2e]

HOT = ("upper-hot", 320)
COLD = [("rot13-c1", 24), ("swapcase-c2", 24), ("novowel-c3", 24)]


def test_two_workers_share_a_hot_adapter_and_keep_to_what_they_hold(tmp_path: Path, redis_url: str) -> None:
    with pipeline(tmp_path, redis_url) as p:
        for name in ("w1", "w2"):
            p.spawn_worker(name, LORAQ_MAX_LORAS="2")
        wait_for_workers(p.stack, count=2, timeout=120)
        for name, _ in (HOT, *COLD):
            p.register_demo_adapter(name, name.split("-")[0])
        jobs = [name for name, n in (HOT, *COLD) for _ in range(n)]
        random.Random(3).shuffle(jobs)
        for i, adapter in enumerate(jobs):
            p.submit(adapter, f"cooperate {i}", max_tokens=24)

        final = p.wait_terminal(len(jobs), timeout=240)
        assert final == {"succeeded": len(jobs)}, final

        with p.sessions() as s:
            rows = s.execute(select(Adapter.name, Job.worker).join(Adapter, Adapter.id == Job.adapter_id)).all()
        by_worker = Counter(w.split("@")[0] for a, w in rows if a == HOT[0])
        assert set(by_worker) == {"w1", "w2"}, f"the hot adapter ran on {dict(by_worker)} only"
        assert min(by_worker.values()) >= 0.15 * HOT[1], f"the hot adapter was not spread: {dict(by_worker)}"

        # Stickiness: a worker swaps an adapter in only for a queue it will drain a
        # good part of, never per batch. Each of the 4 adapters loads a few times per
        # worker (8 to 13 loads in the runs watched); a worker taking jobs in arrival
        # order, with 2 slots for 4 adapters, would load one on most of its batches.
        client = redis.Redis.from_url(redis_url)
        keys = client.keys(WORKER_KEY.format(name="*"))
        loads = {k.decode(): json.loads(client.get(k) or b"{}").get("loads", 0) for k in keys}
        assert len(loads) == 2, loads
        batches = len(jobs) / 16
        assert sum(loads.values()) < batches, f"{loads} adapter loads for about {batches:.0f} batches"
