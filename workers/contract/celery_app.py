"""The Celery app factory shared by the publishers (gateway, reconciler) and the workers.

Both sides must agree on serialisation, priorities and the Redis visibility
timeout: a publisher whose app used another timeout would sweep a live
worker's messages back into their queue. So every app is built here, from
one :class:`QueueSettings`, and only the role decides the few options that
differ (a publisher must fail fast instead of retrying while a request waits).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from celery import Celery

from workers.contract.names import DEFAULT_QUEUE
from workers.contract.settings import QueueSettings
from workers.contract.transport import TRANSPORT


class Role(StrEnum):
    WORKER = "worker"  # consumes; reconnects patiently
    PUBLISHER = "publisher"  # the gateway: fails fast (a 503), never reads results
    BULK_PUBLISHER = "bulk_publisher"  # bulk ingest: as a publisher, and no "task-sent" event per chunk


def transport_options(settings: QueueSettings) -> dict[str, Any]:
    return {
        # Unacked messages come back after this. Workers refresh the clock of the
        # messages they hold (their heartbeat), so it need not exceed the longest job.
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for abandoned messages every 2 s (kombu's default is ~100 s), so
        # a dead worker's jobs come back within visibility_timeout + 2 s.
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex; kombu lets it live 300 s, so a worker
        # killed while holding it would block every restore for five minutes.
        "unacked_mutex_expire": 10,
        # BRPOP's timeout (kombu's default 1 s): a queue the planner adds is listened
        # to from the next BRPOP, so this bounds how late a new adapter starts.
        "polling_interval": 0.25,
    }


def make_celery(settings: QueueSettings, *, role: Role) -> Celery:
    app = Celery("loraq", broker=settings.redis_url, backend=settings.redis_url)
    transport = transport_options(settings)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,  # acknowledge only after the result is recorded
        task_reject_on_worker_lost=True,  # a killed worker's message goes back to the queue
        worker_prefetch_multiplier=1,  # keep messages this worker won't run soon in Redis
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_expires=24 * 3600,
        # Not extended: an extended result stores the task's arguments (a job's prompt) in Redis for
        # result_expires; the registry holds every job's request and result.
        result_extended=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=dict(transport),
        worker_hijack_root_logger=False,
    )
    if settings.redis_url.startswith("redis://"):  # kombu's Redis transport, restores marked in the backlog index
        app.conf.broker_transport = TRANSPORT
    if role is not Role.WORKER:
        _fail_fast(app, bulk=role is Role.BULK_PUBLISHER)
    return app


def _fail_fast(app: Celery, *, bulk: bool) -> None:
    """A request waits on a publish: when Redis is down it must fail in about a second."""
    app.conf.broker_transport_options.update(socket_connect_timeout=1.0, socket_timeout=2.0, max_retries=0)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    # Publishers never read Celery results (the registry has them); without this,
    # send_task would wake the result backend and its reconnect loop.
    app.conf.result_backend = "disabled"
    if bulk:
        # Chunks go out without a "task-sent" event each (half the Redis writes of an ingest);
        # Flower still sees them from the worker's received/started/succeeded events.
        app.conf.task_send_sent_event = False
