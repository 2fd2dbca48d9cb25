"""Worker heartbeat: keep this worker's messages invisible, announce liveness.

kombu's Redis transport records every delivered, unacknowledged message in
the sorted set ``unacked_index`` (score = delivery time) and any consumer
puts a message back in its queue once its score is older than the
visibility timeout. Refreshing the scores of the messages this worker holds
lets the timeout be short (seconds): a live worker's long job is never
redelivered, and a dead worker's messages come back within
``visibility_timeout`` + one restore sweep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

UNACKED_INDEX = "unacked_index"  # kombu's sorted set of unacked delivery tags
WORKER_KEY = "loraq:worker:{name}"  # JSON liveness record, expires when heartbeats stop


def refresh_visibility(client: redis.Redis, tags: Iterable[str], *, now: float | None = None) -> int:
    """Move the visibility clock of ``tags`` to now (only tags still unacked); returns how many."""
    now = time.time() if now is None else now
    mapping = {tag: now for tag in tags}
    if not mapping:
        return 0
    changed: int = client.zadd(UNACKED_INDEX, mapping, xx=True, ch=True)  # type: ignore[assignment]
    return changed


def announce(
    client: redis.Redis,
    *,
    name: str,
    resident: Iterable[str],
    holding: int,
    loads: int,
    ttl_s: int,
    metrics_port: int | None = None,
) -> None:
    """The worker's liveness record, read by ``loraq status`` and the gateway's metrics."""
    record = {
        "name": name,
        "resident": sorted(resident),
        "holding": holding,
        "loads": loads,
        "metrics_port": metrics_port,
        "at": time.time(),
    }
    client.set(WORKER_KEY.format(name=name), json.dumps(record), ex=ttl_s)


def read_all(client: redis.Redis) -> list[dict[str, Any]]:
    """Every live worker's last record (expired records are gone: their worker stopped beating)."""
    keys = list(client.scan_iter(match=WORKER_KEY.format(name="*"), count=500))
    replies = client.mget(keys) if keys else []
    records = [json.loads(raw) for raw in replies if raw]
    return sorted(records, key=lambda r: str(r.get("name")))


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has reserved (running or waiting)."""
    from celery.worker import state

    tags = []
    for request in list(state.reserved_requests):
        tag = (request.delivery_info or {}).get("delivery_tag")
        if tag:
            tags.append(str(tag))
    return tags
