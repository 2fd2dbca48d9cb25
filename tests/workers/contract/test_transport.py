"""kombu's restores through loraq's transport: a message put back in its queue is marked in the backlog
index, so planning sees it (real Redis, real kombu channel)."""

from __future__ import annotations

import time

import redis

from registry.schemas import Priority, SamplingParams, TaskJob
from workers.contract.celery_app import Role, make_celery
from workers.contract.messages import fail_fast_publisher
from workers.contract.names import BACKLOG_KEY, UNACKED_INDEX, queue_name
from workers.contract.settings import QueueSettings
from workers.contract.transport import Transport


def task(job_id: str, adapter: str) -> TaskJob:
    return TaskJob(
        job_id=job_id,
        adapter=adapter,
        version_id=1,
        version=1,
        uri="file:///x",
        sha256="0" * 64,
        prompt="p",
        sampling=SamplingParams(),
        enqueued_at=time.time(),
    )


def test_a_message_restored_after_its_visibility_timeout_is_marked_in_the_backlog_index(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = QueueSettings(redis_url=redis_url)
    fail_fast_publisher(settings).publish(task("j1", "restored"), priority=Priority.INTERACTIVE)
    app = make_celery(settings, role=Role.WORKER)
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)
        queue = conn.SimpleQueue(queue_name("restored"))
        try:
            message = queue.get(timeout=5)  # delivered, never acknowledged: its worker died
            client.zrem(BACKLOG_KEY, "restored")  # a planner found the queue empty and dropped it
            client.zadd(UNACKED_INDEX, {message.delivery_tag: time.time() - 3600})  # its clock ran out
            assert client.zscore(BACKLOG_KEY, "restored") is None

            queue.channel.qos.restore_visible(num=10, interval=1)

            assert client.zscore(BACKLOG_KEY, "restored") is not None
            again = queue.get(timeout=5)
            assert again.payload == message.payload
            again.ack()
        finally:
            queue.close()


def test_a_restore_keeps_an_older_mark(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = QueueSettings(redis_url=redis_url)
    fail_fast_publisher(settings).publish(task("j1", "busy"), priority=Priority.INTERACTIVE)
    app = make_celery(settings, role=Role.WORKER)
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(queue_name("busy"))
        try:
            message = queue.get(timeout=5)
            client.zadd(BACKLOG_KEY, {"busy": 1000.0})  # the queue has waited since long before
            message.requeue()  # rejected back into the queue
            assert client.zscore(BACKLOG_KEY, "busy") == 1000.0
            queue.get(timeout=5).ack()
        finally:
            queue.close()
