"""Reads of broker state: what waits in the adapter queues, and which jobs have a message.

kombu keeps one Redis list per queue and priority step (``lora.x`` for
priority 0, ``lora.x\\x06\\x166`` for 6, ...), pushes on the left and pops on
the right, so the oldest message of a list is at index -1; a delivered,
unacknowledged message sits in the ``unacked`` hash. These functions are the
only code that knows that layout; the planner, the reconciler and the
gateway's status and metrics all read through them.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from registry.schemas import Priority
from workers.contract.names import CHUNK_JOBS_HEADER, PRIORITY_STEPS, UNACKED, priority_key, queue_name


@dataclass(frozen=True)
class QueueState:
    """One adapter queue as seen at a decision point."""

    adapter: str
    depth: int  # messages waiting, all priorities (a bulk chunk is one)
    oldest_age_s: float  # age of the oldest waiting message; 0 when empty
    interactive: int = 0  # messages waiting at interactive priority
    served_ago_s: float = math.inf  # since a worker last consumed this queue (any worker); inf: never, or unknown


def enqueued_at(raw: bytes | None) -> float | None:
    """When the job in a raw kombu message was accepted (``TaskJob.enqueued_at``); for a bulk chunk,
    its first job's (all of a chunk's jobs are accepted together)."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]
        if isinstance(first, list):  # a chunk: its one argument is the list of its jobs
            first = first[0]
        return float(first["enqueued_at"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def read_states(client: redis.Redis, adapters: Sequence[str], *, now: float | None = None) -> list[QueueState]:
    """Depth, oldest age and interactive backlog of each adapter's queue: one pipelined round trip."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    keys = [(a, step) for a in adapters for step in PRIORITY_STEPS]
    for adapter, step in keys:
        key = priority_key(queue_name(adapter), step)
        pipe.llen(key)
        pipe.lindex(key, -1)
    replies = pipe.execute()
    depth: dict[str, int] = {}
    interactive: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for i, (adapter, step) in enumerate(keys):
        length, raw = int(replies[2 * i]), replies[2 * i + 1]
        depth[adapter] = depth.get(adapter, 0) + length
        if step == Priority.INTERACTIVE:
            interactive[adapter] = length
        at = enqueued_at(raw)
        if at is not None:
            oldest[adapter] = min(oldest.get(adapter, at), at)
    return [
        QueueState(
            adapter=a,
            depth=depth[a],
            oldest_age_s=max(0.0, now - oldest[a]) if a in oldest else 0.0,
            interactive=interactive.get(a, 0),
        )
        for a in adapters
    ]


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


def present_ids(client: redis.Redis, adapters: Iterable[str]) -> set[str]:
    """Task ids of every message waiting in these adapters' queues or held unacknowledged.

    Reads whole lists: its cost grows with those queues' length, so the reconciler calls it
    once per pass, for the adapters of the (bounded number of) jobs it suspects."""
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
