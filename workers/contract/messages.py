"""The task messages loraq sends, built and published in one place.

Every path that puts a job on a queue goes through :class:`Publisher`: the
gateway's submit, bulk ingest and its resume, the reconciler that re-publishes
a lost message, and a worker re-queueing a job to retry. So every message
carries the same task name, queue, priority, task id (= job id, or chunk id)
and an ``argsrepr`` that names the job without its prompt: Celery puts the
repr of a task's arguments in its events, and Flower shows them to anyone
who can open it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.messaging import Producer

from registry.errors import Unavailable
from registry.schemas import Priority, TaskJob
from workers.contract import backlog, notify
from workers.contract.celery_app import Role, make_celery
from workers.contract.names import (
    CANCEL_TTL_S,
    CHUNK_JOBS_HEADER,
    RUN_CHUNK_TASK,
    RUN_JOB_TASK,
    cancel_key,
    queue_name,
)
from workers.contract.settings import QueueSettings

log = logging.getLogger(__name__)

TaskPayload = dict[str, Any]  # a TaskJob as JSON (``model_dump(mode="json")``): bulk ingest builds these directly


@dataclass(frozen=True)
class TaskMessage:
    """One Celery message, before it is sent."""

    task: str  # RUN_JOB_TASK or RUN_CHUNK_TASK
    task_id: str  # the job id, or the chunk id
    queue: str  # lora.<adapter>
    priority: Priority
    args: list[Any]
    argsrepr: str  # what Celery events show instead of the arguments: never a prompt
    headers: dict[str, Any] = field(default_factory=dict)


def argsrepr_for(payload: TaskPayload | Sequence[TaskPayload]) -> str:
    """What Celery's events show for a message's arguments: the adapter and the count, never a prompt.
    Celery drops ``argsrepr`` when a task retries itself, so the worker passes this again then."""
    if isinstance(payload, dict):
        return f"[job of {payload.get('adapter')} v{payload.get('version')}]"
    adapter = payload[0].get("adapter") if payload else None
    return f"[{len(payload)} jobs of {adapter}]"


def waiting_since(payload: TaskPayload | Sequence[TaskPayload]) -> dict[str, float]:
    """Adapter -> the earliest enqueue time among these jobs: what the backlog index is told."""
    since: dict[str, float] = {}
    for job in [payload] if isinstance(payload, dict) else payload:
        adapter, at = str(job["adapter"]), float(job["enqueued_at"])
        since[adapter] = min(since.get(adapter, at), at)
    return since


def job_message(task: TaskJob, *, priority: Priority) -> TaskMessage:
    return TaskMessage(
        task=RUN_JOB_TASK,
        task_id=task.job_id,
        queue=queue_name(task.adapter),
        priority=priority,
        args=[payload := task.model_dump(mode="json")],
        argsrepr=argsrepr_for(payload),
    )


def chunk_message(chunk_id: str, payloads: Sequence[TaskPayload], *, priority: Priority) -> TaskMessage:
    """Up to K jobs of ONE adapter (a bulk file's lines): fewer messages, and a worker that takes
    one keeps that adapter resident for all of its jobs. The ``loraq_jobs`` header lets the
    reconciler find each job without decoding the body."""
    adapters = {p["adapter"] for p in payloads}
    if len(adapters) != 1:
        raise ValueError(f"a chunk carries jobs of one adapter, not {sorted(adapters)}")
    adapter = payloads[0]["adapter"]
    return TaskMessage(
        task=RUN_CHUNK_TASK,
        task_id=chunk_id,
        queue=queue_name(adapter),
        priority=priority,
        args=[list(payloads)],
        argsrepr=argsrepr_for(payloads),
        headers={CHUNK_JOBS_HEADER: [p["job_id"] for p in payloads]},
    )


def send(app: Celery, message: TaskMessage, *, retry: bool, producer: Producer | None = None) -> None:
    app.send_task(
        message.task,
        args=message.args,
        task_id=message.task_id,
        queue=message.queue,
        priority=int(message.priority),
        argsrepr=message.argsrepr,
        headers=message.headers or None,
        producer=producer,
        retry=retry,
    )


class Publisher:
    """Puts jobs on their adapter's queue.

    ``app`` sends single jobs; ``bulk_app`` (default: ``app``) sends chunks, so the gateway can
    skip a "task-sent" event per chunk. ``fail_fast``: no retries, any failure raises
    :class:`Unavailable` (``queue_unavailable``) at once, for callers a client is waiting on.
    """

    def __init__(self, app: Celery, *, bulk_app: Celery | None = None, fail_fast: bool = True) -> None:
        self.app = app
        self.bulk_app = bulk_app or app
        self.fail_fast = fail_fast

    def publish(self, task: TaskJob, *, priority: Priority) -> None:
        with self._unavailable("The job queue (Redis) is unavailable; the job was not accepted. Retry later."):
            send(self.app, job_message(task, priority=priority), retry=not self.fail_fast)
        self.mark({task.adapter: task.enqueued_at})

    def publish_chunks(self, chunks: Sequence[tuple[str, Sequence[TaskPayload]]], *, priority: Priority) -> None:
        """Bulk chunks through one producer, their LPUSHes pipelined (kombu's publish batch: one
        round trip per 1000 commands). A failure part-way may have sent some: resending them is
        harmless (recording is exactly-once), losing them is not, so the caller resends all."""
        messages = [chunk_message(chunk_id, payloads, priority=priority) for chunk_id, payloads in chunks]
        with (
            self._unavailable("The job queue (Redis) is unavailable; the batch resumes publishing when it returns."),
            self.bulk_app.producer_or_acquire() as producer,
            producer.batch(max_size=1000),
        ):
            for message in messages:
                send(self.bulk_app, message, retry=not self.fail_fast, producer=producer)
        self.mark(waiting_since([p for _, payloads in chunks for p in payloads]))

    def mark(self, waiting_since: Mapping[str, float]) -> None:
        """Put these adapters in the backlog index, after their messages are in Redis. Best effort:
        a mark lost here is repaired by the reconciler once the job has waited past its grace."""
        try:
            with self.app.connection_for_write() as conn:
                backlog.mark(conn.default_channel.client, waiting_since)
        except Exception:
            log.warning("could not mark %s in the backlog index", sorted(waiting_since), exc_info=True)

    def signal_cancel(self, job_id: str) -> None:
        """Tell running workers to stop ``job_id`` at their next step, and requests waiting on it that it
        ended. Best effort: the registry already says cancelled, so its result is never recorded."""
        try:
            with self.app.connection_for_write() as conn:
                client = conn.default_channel.client
                client.set(cancel_key(job_id), "1", ex=CANCEL_TTL_S)
                notify.publish_done(client, [job_id])
        except Exception:
            log.warning("could not signal the cancellation of %s to workers", job_id, exc_info=True)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=1)
            conn.default_channel.client.ping()

    @contextmanager
    def _unavailable(self, message: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # kombu raises many kinds: all mean "not queued"
            raise Unavailable(message, code="queue_unavailable") from exc


def fail_fast_publisher(settings: QueueSettings) -> Publisher:
    """The gateway's publisher: answers within about a second when Redis is down (a 503)."""
    return Publisher(
        make_celery(settings, role=Role.PUBLISHER),
        bulk_app=make_celery(settings, role=Role.BULK_PUBLISHER),
        fail_fast=True,
    )
