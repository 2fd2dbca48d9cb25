"""Every queue, task, header and Redis key name the gateway and the workers share.

One module, so a reader sees the whole surface of Redis state at once, and
nothing is spelled in two places. kombu's own keys are named here too,
because loraq reads them (the reconciler, the heartbeat, the queue reads).
"""

from __future__ import annotations

from kombu.transport.redis import PRIORITY_STEPS as _STEPS
from kombu.transport.redis import Channel

# --- Celery queues and tasks ------------------------------------------------------------------
QUEUE_PREFIX = "lora."  # queue of adapter NAME is "lora.NAME"
DEFAULT_QUEUE = "loraq.default"  # Celery needs one; loraq never publishes to it, workers consume it
RUN_JOB_TASK = "loraq.run_job"  # the task that runs one job; its task id is the job id
RUN_CHUNK_TASK = "loraq.run_chunk"  # up to K jobs of one adapter from a bulk file; task id = chunk id
CHUNK_JOBS_HEADER = "loraq_jobs"  # message header of a chunk: its job ids (the reconciler reads it)

# --- loraq's own Redis keys ---------------------------------------------------------------------
CANCEL_KEY = "loraq:cancel:{job_id}"  # set by the gateway when a job is cancelled; workers stop its row
CANCEL_TTL_S = 24 * 3600
SERVED_KEY = "loraq:served"  # sorted set: adapter -> when a worker last consumed its queue (epoch s)
BACKLOG_KEY = "loraq:backlog"  # sorted set: adapter -> when its queue last went from empty to waiting (epoch s)
WORKER_KEY = "loraq:worker:{name}"  # a worker's heartbeat record (JSON), expires when heartbeats stop
RECONCILE_LOCK = "loraq:reconcile"  # held by the one worker re-publishing lost messages this round
DONE_CHANNEL = "loraq:done"  # pub/sub: a JSON list of the job ids one commit ended (workers, cancels); gateways wake
STREAM_KEY = "loraq:stream:{job_id}"  # stream: a streamed job's text deltas, then its end marker (workers write)
STREAM_MAXLEN = 1000  # entries a token stream keeps (approximate trim); a reader that falls behind reads the result
STREAM_TTL_S = 300  # a token stream expires this long after its last entry

# --- kombu's Redis transport, read (never written) by loraq except the unacked index's scores ---
UNACKED = "unacked"  # hash: delivery tag -> [message, exchange, routing key] of unacknowledged messages
UNACKED_INDEX = "unacked_index"  # sorted set: delivery tag -> delivery time (the visibility clock)
PRIORITY_STEPS: tuple[int, ...] = tuple(_STEPS)  # one Redis list per queue and step (Priority values sit on them)
KOMBU_SEP: str = Channel.sep  # between a queue name and its priority step in a list's key


def queue_name(adapter: str) -> str:
    return f"{QUEUE_PREFIX}{adapter}"


def adapter_of_queue(queue: str) -> str | None:
    """The adapter name a queue serves, or ``None`` for a queue that is not ours."""
    return queue[len(QUEUE_PREFIX) :] if queue.startswith(QUEUE_PREFIX) else None


def priority_key(queue: str, step: int) -> str:
    """The Redis list holding ``queue``'s messages of priority ``step`` (kombu's layout)."""
    return queue if step == 0 else f"{queue}{KOMBU_SEP}{step}"


def cancel_key(job_id: str) -> str:
    return CANCEL_KEY.format(job_id=job_id)


def worker_key(name: str) -> str:
    return WORKER_KEY.format(name=name)


def stream_key(job_id: str) -> str:
    return STREAM_KEY.format(job_id=job_id)
