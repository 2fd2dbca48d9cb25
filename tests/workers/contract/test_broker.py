"""What a worker reads of its queues: depth and oldest wait, for job messages and bulk chunks alike."""

from __future__ import annotations

import json

import redis

from registry.schemas import Priority, SamplingParams, TaskJob
from workers.contract.broker import message_ids, read_states
from workers.contract.messages import fail_fast_publisher
from workers.contract.settings import QueueSettings


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
    publisher = fail_fast_publisher(QueueSettings(redis_url=redis_url))
    publisher.publish(task("j1", "single", 1000.0), priority=Priority.INTERACTIVE)
    chunk = [task(f"c{i}", "bulk", 900.0 + i).model_dump(mode="json") for i in range(3)]
    publisher.publish_chunks([("chunk-1", chunk)], priority=Priority.BULK)

    states = {s.adapter: s for s in read_states(client, ["single", "bulk", "empty"], now=1100.0)}

    assert (states["single"].depth, states["single"].oldest_age_s, states["single"].interactive) == (1, 100.0, 1)
    assert (states["bulk"].depth, states["bulk"].oldest_age_s, states["bulk"].interactive) == (1, 200.0, 0)
    assert (states["empty"].depth, states["empty"].oldest_age_s) == (0, 0.0)


def test_message_ids_are_read_from_queued_and_unacked_entries() -> None:
    message = {"headers": {"id": "job-1"}, "properties": {"correlation_id": "job-1"}, "body": ""}
    assert message_ids(json.dumps(message)) == ["job-1"]
    assert message_ids(json.dumps([message, "", "lora.x"])) == ["job-1"]
    assert message_ids(b"not json") == []
    chunk = {"headers": {"id": "chunk-1", "loraq_jobs": ["a", "b"]}, "properties": {}}
    assert message_ids(json.dumps(chunk)) == ["chunk-1", "a", "b"]
