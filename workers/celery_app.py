"""The Celery app factory shared by the publisher (gateway) and the workers.

Torch-free. Both sides must agree on serialisation, priorities and the Redis
visibility timeout, so both build their app here.
"""

from __future__ import annotations

from celery import Celery

DEFAULT_QUEUE = "loraq.default"  # never used by loraq's own messages; workers listen so Celery has one


def make_celery(redis_url: str, *, visibility_timeout_s: int = 20) -> Celery:
    app = Celery("loraq", broker=redis_url, backend=redis_url)
    transport = {
        # Unacked messages come back after this. Workers refresh the clock of the
        # messages they hold (workers.heartbeat), so it need not exceed the longest job.
        "visibility_timeout": visibility_timeout_s,
        # Sweep for abandoned messages every 2 s (kombu's default is ~100 s), so
        # a dead worker's jobs come back within visibility_timeout + 2 s.
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex; kombu lets it live 300 s, so a worker
        # killed while holding it would block every restore for five minutes.
        "unacked_mutex_expire": 10,
        # BRPOP's timeout (kombu's default 1 s): a queue the sticky consumer adds is
        # listened to from the next BRPOP, so this bounds how late a new adapter starts.
        "polling_interval": 0.25,
    }
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
        result_extended=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        worker_hijack_root_logger=False,
    )
    return app
