"""Re-publish accepted jobs whose message is gone: nothing accepted is ever lost.

kombu's Redis transport takes a message off its list (``BRPOP``) and only
then records it as unacknowledged; a worker killed with SIGKILL between the
two loses that message (seen in the kill -9 test: 1 job in 500, once). A
publish that failed after the row was written leaves the same state. So,
every ``interval`` seconds, one worker at a time (a Redis lock):

1. read the jobs the registry still has ``queued`` after ``grace`` seconds;
2. look for their messages in their queues (every priority list) and in the
   transport's unacknowledged hash;
3. publish again those found nowhere, with the same task id.

A message popped by a live worker at that very moment is found nowhere too
and so runs twice; that is harmless because result recording is
exactly-once. ``grace`` must exceed the visibility timeout plus a restore
sweep, so a dead worker's messages are back in their queue before anyone
looks for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import timedelta

import redis
from celery import Celery
from kombu.transport.redis import PRIORITY_STEPS
from sqlalchemy.orm import Session, sessionmaker

from registry import jobs
from registry.models import utcnow
from registry.queues import CHUNK_JOBS_HEADER, RUN_JOB_TASK, queue_name
from registry.schemas import TaskJob
from workers.queue_state import priority_key

log = logging.getLogger(__name__)

UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
LOCK = "loraq:reconcile"


def message_ids(raw: bytes | str) -> list[str]:
    """The job ids a raw kombu message (or an ``unacked`` entry ``[message, exchange, key]``) carries:
    its task id, and for a bulk chunk the ids in its ``loraq_jobs`` header."""
    try:
        data = json.loads(raw)
        if isinstance(data, list):
            data = data[0]
        headers = data.get("headers", {})
        found = headers.get("id") or data.get("properties", {}).get("correlation_id")
        chunk = headers.get(CHUNK_JOBS_HEADER) or []
    except (ValueError, AttributeError, IndexError, TypeError):
        return []
    return ([str(found)] if found else []) + [str(j) for j in chunk if isinstance(j, str)]


def missing(expected: Iterable[str], present: set[str]) -> list[str]:
    """Jobs the registry expects a message for that no queue or worker holds."""
    return [job_id for job_id in expected if job_id not in present]


def present_ids(client: redis.Redis, adapters: Iterable[str]) -> set[str]:
    """Task ids of every message waiting in these adapters' queues or held unacknowledged."""
    pipe = client.pipeline(transaction=False)
    for adapter in sorted(set(adapters)):
        for step in PRIORITY_STEPS:
            pipe.lrange(priority_key(queue_name(adapter), step), 0, -1)
    pipe.hvals(UNACKED)
    found: set[str] = set()
    for reply in pipe.execute():
        for raw in reply:
            found.update(message_ids(raw))
    return found


def reconcile_once(
    *, sessions: sessionmaker[Session], client: redis.Redis, app: Celery, grace_s: float, lock_s: int
) -> list[str]:
    """One pass; returns the job ids published again (none when another worker holds the lock)."""
    if not client.set(LOCK, "1", nx=True, ex=lock_s):
        return []
    with sessions() as session:
        stale = jobs.stale_queued(session, older_than=utcnow() - timedelta(seconds=grace_s))
    if not stale:
        return []
    present = present_ids(client, (task.adapter for task, _ in stale))
    lost = set(missing((task.job_id for task, _ in stale), present))
    for task, priority in stale:
        if task.job_id in lost:
            log.warning("job %s is unfinished with no message anywhere; publishing it again", task.job_id)
            publish(app, task, priority=priority)
    return sorted(lost)


def publish(app: Celery, task: TaskJob, *, priority: int) -> None:
    app.send_task(
        RUN_JOB_TASK,
        args=[task.model_dump(mode="json")],
        task_id=task.job_id,
        queue=queue_name(task.adapter),
        priority=priority,
    )
