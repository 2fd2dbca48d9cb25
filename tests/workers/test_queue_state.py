"""What a worker reads of its queues: depth and oldest wait, for job messages and bulk chunks alike."""

from __future__ import annotations

import redis

from gateway.publisher import Publisher
from registry.schemas import Priority, SamplingParams, TaskJob
from workers.queue_state import read_states


def task(job_id: str, adapter: str, enqueued_at: float) -> TaskJob:
    return TaskJob(
        job_id=job_id,
        adapter=adapter,
        version_id=1,
        version=1,
        uri="file:///x",
        sha256="0" * 64,
        prompt="p",
        sampling=SamplingParams(),
        enqueued_at=enqueued_at,
    )


def test_depth_and_oldest_wait_count_jobs_and_bulk_chunks(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    publisher = Publisher(redis_url)
    publisher.publish(task("j1", "single", 1000.0), priority=Priority.INTERACTIVE)
    chunk = [task(f"c{i}", "bulk", 900.0 + i).model_dump(mode="json") for i in range(3)]
    publisher.publish_chunks([("chunk-1", chunk)], priority=Priority.BULK)

    states = {s.adapter: s for s in read_states(client, ["single", "bulk", "empty"], now=1100.0)}

    assert (states["single"].depth, states["single"].oldest_age_s, states["single"].interactive) == (1, 100.0, 1)
    assert (states["bulk"].depth, states["bulk"].oldest_age_s, states["bulk"].interactive) == (1, 200.0, 0)
    assert (states["empty"].depth, states["empty"].oldest_age_s) == (0, 0.0)
