"""Queued jobs whose message vanished are published again; others are left alone.

Real Redis (a private server) and the registry on SQLite and PostgreSQL;
messages are published with the real Celery app, as the gateway does.
"""

from __future__ import annotations

import json
from datetime import timedelta

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from registry.db import transaction
from registry.models import Job, utcnow
from registry.schemas import Priority
from tests.workers.test_runtime import enqueue
from workers.contract import backlog
from workers.contract.broker import message_ids
from workers.contract.celery_app import Role, make_celery
from workers.contract.messages import Publisher, fail_fast_publisher
from workers.contract.names import BACKLOG_KEY, UNACKED, queue_name
from workers.contract.settings import QueueSettings
from workers.services.reconciler import Reconciler, missing


def test_missing_lists_expected_jobs_no_message_carries() -> None:
    assert missing(["a", "b", "c"], {"b"}) == ["a", "c"]


def worker_side(sessions: sessionmaker[Session], redis_url: str) -> tuple[redis.Redis, Publisher, Reconciler]:
    """An empty Redis, and the publisher and reconciler a worker builds over it."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    publisher = Publisher(make_celery(QueueSettings(redis_url=redis_url), role=Role.WORKER), fail_fast=False)
    reconciler = Reconciler(sessions=sessions, client=client, publisher=publisher, grace_s=30, lock_s=1)
    return client, publisher, reconciler


def test_only_stale_jobs_with_no_message_anywhere_are_published_again(
    session_factory: sessionmaker[Session], redis_url: str
) -> None:
    client, publisher, reconciler = worker_side(session_factory, redis_url)
    names = ["lost", "waiting", "held", "fresh", "bulk", "abandoned"]
    lost, waiting, held, fresh, bulk, abandoned = enqueue(session_factory, names)
    with transaction(session_factory) as session:  # all but "fresh" were accepted a minute ago
        old = utcnow() - timedelta(seconds=60)
        stale = [lost.job_id, waiting.job_id, held.job_id, bulk.job_id, abandoned.job_id]
        session.execute(update(Job).where(Job.id.in_(stale)).values(created_at=old))
        # started a minute ago by a worker that gave up on its database: running, with no message
        session.execute(update(Job).where(Job.id == abandoned.job_id).values(status="running", started_at=old))
    publisher.publish(waiting, priority=Priority.BULK)  # still in its queue
    fail_fast_publisher(QueueSettings(redis_url=redis_url)).publish_chunks(
        [("chunk-1", [bulk.model_dump(mode="json")])], priority=Priority.BULK
    )  # in a bulk chunk's header
    held_message = {"headers": {"id": held.job_id}, "properties": {"correlation_id": held.job_id}}
    client.hset(UNACKED, "tag-1", json.dumps([held_message, "", queue_name("upper")]))  # a worker holds it

    again = reconciler.run_once()

    assert again == sorted([lost.job_id, abandoned.job_id])
    queued = [
        i for key in client.keys(queue_name("upper") + "*") for m in client.lrange(key, 0, -1) for i in message_ids(m)
    ]
    assert sorted(queued) == sorted([waiting.job_id, lost.job_id, abandoned.job_id, "chunk-1", bulk.job_id])
    # Another worker's pass within the lock period does nothing.
    assert reconciler.run_once() == []
    assert fresh.job_id not in queued


def test_a_queue_kombu_restored_without_a_mark_is_put_back_in_the_backlog_index(
    session_factory: sessionmaker[Session], redis_url: str
) -> None:
    client, publisher, reconciler = worker_side(session_factory, redis_url)
    [restored] = enqueue(session_factory, ["restored"])
    with transaction(session_factory) as session:  # started a minute ago by a worker that died
        old = utcnow() - timedelta(seconds=60)
        session.execute(update(Job).where(Job.id == restored.job_id).values(status="running", started_at=old))
    publisher.publish(restored, priority=Priority.INTERACTIVE)
    client.delete(BACKLOG_KEY)  # as when kombu puts a dead worker's message back: nobody marks it

    assert reconciler.run_once() == []  # its message is there: nothing to publish again
    assert [a for a, _ in backlog.waiting(client, limit=10)] == ["upper"]
