"""Publish job messages to the adapter's Redis queue through Celery.

Short socket timeouts and no retries: when Redis is down the gateway must
answer 503 quickly instead of hanging the request.
"""

from __future__ import annotations

import logging

from celery import Celery

from registry.errors import Unavailable
from registry.queues import (
    CANCEL_KEY,
    CANCEL_TTL_S,
    CHUNK_JOBS_HEADER,
    ROUTES_EPOCH_KEY,
    RUN_CHUNK_TASK,
    RUN_JOB_TASK,
    queue_name,
)
from registry.schemas import Priority, TaskJob
from workers.celery_app import make_celery

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, redis_url: str) -> None:
        self.app: Celery = make_celery(redis_url)
        self.app.conf.broker_transport_options.update(socket_connect_timeout=1.0, socket_timeout=2.0, max_retries=0)
        self.app.conf.broker_connection_retry = False
        self.app.conf.broker_connection_max_retries = 0
        # The gateway never reads Celery results (the registry has them); without
        # this, send_task would wake the result backend and its reconnect loop.
        self.app.conf.result_backend = "disabled"

    def publish(self, task: TaskJob, *, priority: Priority) -> None:
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[task.model_dump(mode="json")],
                task_id=task.job_id,
                queue=queue_name(task.adapter),
                priority=int(priority),
                retry=False,
            )
        except Exception as exc:  # kombu raises many kinds: all mean "not queued"
            raise Unavailable(
                "The job queue (Redis) is unavailable; the job was not accepted. Retry later.",
                code="queue_unavailable",
            ) from exc

    def publish_chunk(self, chunk_id: str, tasks: list[TaskJob], *, priority: Priority) -> None:
        """One message carrying several jobs of one adapter (bulk ingest): fewer messages, and a
        worker that takes it keeps that adapter resident for all of them."""
        adapters = {t.adapter for t in tasks}
        if len(adapters) != 1:
            raise ValueError(f"a chunk carries jobs of one adapter, not {sorted(adapters)}")
        try:
            self.app.send_task(
                RUN_CHUNK_TASK,
                args=[[t.model_dump(mode="json", exclude_defaults=True) for t in tasks]],
                task_id=chunk_id,
                queue=queue_name(tasks[0].adapter),
                priority=int(priority),
                headers={CHUNK_JOBS_HEADER: [t.job_id for t in tasks]},
                retry=False,
            )
        except Exception as exc:
            raise Unavailable(
                "The job queue (Redis) is unavailable; the batch resumes publishing when it returns.",
                code="queue_unavailable",
            ) from exc

    def signal_cancel(self, job_id: str) -> None:
        """Tell running workers to stop ``job_id`` at their next step. Best effort:
        the registry already says cancelled, so its result is never recorded."""
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.client.set(CANCEL_KEY.format(job_id=job_id), "1", ex=CANCEL_TTL_S)
        except Exception:
            log.warning("could not signal the cancellation of %s to workers", job_id, exc_info=True)

    def announce_routes(self) -> None:
        """Tell running workers that adapters or routes changed, so they re-read them within a
        plan tick instead of their next refresh. Best effort: they refresh anyway."""
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.client.incr(ROUTES_EPOCH_KEY)
        except Exception:
            log.warning("could not announce a route change to workers", exc_info=True)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=1)
            conn.default_channel.client.ping()
