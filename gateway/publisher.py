"""Publish job messages to the adapter's Redis queue through Celery.

Short socket timeouts and no retries: when Redis is down the gateway must
answer 503 quickly instead of hanging the request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.messaging import Producer

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
        # Bulk chunks go out without a "task-sent" event each (half the Redis writes of an
        # ingest); Flower still sees them from the worker's received/started/succeeded events.
        self.bulk = make_celery(redis_url)
        self.bulk.conf.broker_transport_options.update(self.app.conf.broker_transport_options)
        self.bulk.conf.update(
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            result_backend="disabled",
            task_send_sent_event=False,
        )

    def publish(self, task: TaskJob, *, priority: Priority) -> None:
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[task.model_dump(mode="json")],
                task_id=task.job_id,
                queue=queue_name(task.adapter),
                priority=int(priority),
                argsrepr=f"[job of {task.adapter} v{task.version}]",  # no repr of the prompt in events
                retry=False,
            )
        except Exception as exc:  # kombu raises many kinds: all mean "not queued"
            raise Unavailable(
                "The job queue (Redis) is unavailable; the job was not accepted. Retry later.",
                code="queue_unavailable",
            ) from exc

    def publish_chunks(self, chunks: Sequence[tuple[str, list[dict[str, Any]]]], *, priority: Priority) -> None:
        """Messages of several jobs of one adapter each (bulk ingest): fewer messages, and a worker
        that takes one keeps that adapter resident for all of its jobs. One producer, its LPUSHes
        pipelined (kombu's publish batch: one round trip per 1000 commands); ``argsrepr`` spares
        Celery a repr of every prompt. A failure part-way may have sent some: resending them is
        harmless (recording is exactly-once), losing them is not, so the caller resends all."""
        try:
            with self.bulk.producer_or_acquire() as producer, producer.batch(max_size=1000):
                for chunk_id, tasks in chunks:
                    self._send_chunk(producer, chunk_id, tasks, priority)
        except ValueError:
            raise
        except Exception as exc:
            raise Unavailable(
                "The job queue (Redis) is unavailable; the batch resumes publishing when it returns.",
                code="queue_unavailable",
            ) from exc

    def _send_chunk(self, producer: Producer, chunk_id: str, tasks: list[dict[str, Any]], priority: Priority) -> None:
        """``tasks`` are :class:`TaskJob` payloads (``model_dump(mode="json")``), all of one adapter."""
        adapters = {t["adapter"] for t in tasks}
        if len(adapters) != 1:
            raise ValueError(f"a chunk carries jobs of one adapter, not {sorted(adapters)}")
        adapter = tasks[0]["adapter"]
        self.bulk.send_task(
            RUN_CHUNK_TASK,
            args=[tasks],
            task_id=chunk_id,
            queue=queue_name(adapter),
            priority=int(priority),
            headers={CHUNK_JOBS_HEADER: [t["job_id"] for t in tasks]},
            argsrepr=f"[{len(tasks)} jobs of {adapter}]",
            producer=producer,
            retry=False,
        )

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
