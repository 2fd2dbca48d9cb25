"""Names shared by the gateway (publisher) and the workers (consumers).

One Celery queue per adapter name, so Flower and ``redis-cli LLEN`` show each
adapter's backlog, and a worker chooses what to pull by choosing queues.
"""

from __future__ import annotations

QUEUE_PREFIX = "lora."  # queue of adapter NAME is "lora.NAME"
RUN_JOB_TASK = "loraq.run_job"  # the task that runs one job; its task id is the job id
RUN_CHUNK_TASK = "loraq.run_chunk"  # up to K jobs of one adapter from a bulk file; task id = chunk id
CHUNK_JOBS_HEADER = "loraq_jobs"  # message header of a chunk: its job ids (the reconciler reads it)
CANCEL_KEY = "loraq:cancel:{job_id}"  # set by the gateway when a job is cancelled; workers stop its row
CANCEL_TTL_S = 24 * 3600
ROUTES_EPOCH_KEY = "loraq:routes:epoch"  # bumped on every adapter or route change; workers re-read at once


def queue_name(adapter: str) -> str:
    return f"{QUEUE_PREFIX}{adapter}"


def adapter_of_queue(queue: str) -> str | None:
    """The adapter name a queue serves, or ``None`` for a queue that is not ours."""
    return queue[len(QUEUE_PREFIX) :] if queue.startswith(QUEUE_PREFIX) else None
