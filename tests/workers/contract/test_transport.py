"""kombu's restores through loraq's transport: a message put back in its queue is marked in the backlog
index, so planning sees it (real Redis, real kombu channel)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from registry.schemas import Priority
from tests.workers.contract.test_broker import task
from workers.contract.celery_app import Role, make_celery
from workers.contract.messages import fail_fast_publisher
from workers.contract.names import BACKLOG_KEY, UNACKED_INDEX, queue_name
from workers.contract.settings import QueueSettings
from workers.contract.transport import Transport


@contextmanager
def delivered(redis_url: str, adapter: str) -> Iterator[tuple[Any, Any]]:
    """A job of ``adapter`` published, then delivered to a worker's kombu queue and not acknowledged:
    (the queue, the message)."""
    settings = QueueSettings(redis_url=redis_url)
    fail_fast_publisher(settings).publish(task("j1", adapter, time.time()), priority=Priority.INTERACTIVE)
    with make_celery(settings, role=Role.WORKER).connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)
        queue = conn.SimpleQueue(queue_name(adapter))
        try:
            yield queue, queue.get(timeout=5)
        finally:
            queue.close()


def test_a_message_restored_after_its_visibility_timeout_is_marked_in_the_backlog_index(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with delivered(redis_url, "restored") as (queue, message):  # its worker died holding it
        client.zrem(BACKLOG_KEY, "restored")  # a planner found the queue empty and dropped it
        client.zadd(UNACKED_INDEX, {message.delivery_tag: time.time() - 3600})  # its clock ran out
        assert client.zscore(BACKLOG_KEY, "restored") is None

        queue.channel.qos.restore_visible(num=10, interval=1)

        assert client.zscore(BACKLOG_KEY, "restored") is not None
        again = queue.get(timeout=5)
        assert again.payload == message.payload
        again.ack()


def test_a_restore_keeps_an_older_mark(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with delivered(redis_url, "busy") as (queue, message):
        client.zadd(BACKLOG_KEY, {"busy": 1000.0})  # the queue has waited since long before
        message.requeue()  # rejected back into the queue
        assert client.zscore(BACKLOG_KEY, "busy") == 1000.0
        queue.get(timeout=5).ack()
