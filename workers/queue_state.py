"""Read the per-adapter queues' state from Redis for the sticky policy.

kombu keeps one Redis list per queue and priority step (``lora.x`` for
priority 0, ``lora.x\\x06\\x166`` for 6, ...), pushes on the left and pops on
the right, so the oldest message of a list is at index -1. One pipelined
round trip reads every length and every oldest message.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from registry.queues import queue_name
from registry.schemas import Priority
from workers.sticky import QueueState

KOMBU_SEP: str = Channel.sep  # between a queue name and its priority step (Priority values sit on the steps)


def priority_key(queue: str, step: int) -> str:
    return queue if step == 0 else f"{queue}{KOMBU_SEP}{step}"


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
