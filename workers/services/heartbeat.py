"""The worker's heartbeat service: refresh the visibility clock of every message it holds, and
announce its liveness record (:class:`workers.contract.heartbeat.WorkerBeat`).

Cost per run: one ZADD over the messages this worker holds (bounded by its
prefetch) and one SET.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import redis

from workers.contract import heartbeat
from workers.contract.heartbeat import WorkerBeat


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has reserved (running or waiting)."""
    from celery.worker import state

    for _ in range(3):  # Celery's consumer thread may change the set while we copy it
        try:
            requests = list(state.reserved_requests)
            break
        except RuntimeError:
            continue
    else:
        return []
    tags = []
    for request in requests:
        # The kombu message's tag: Celery's ``Request.delivery_info`` keeps only exchange, routing
        # key, priority and redelivered, so reading the tag there refreshed nothing, and a job
        # running past the visibility timeout was delivered again while it ran.
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.append(str(tag))
    return tags


class Heartbeat:
    def __init__(
        self,
        *,
        client: redis.Redis,
        name: Callable[[], str | None],
        resident: Callable[[], Collection[str]],
        loads: Callable[[], int],
        ttl_s: int,
        metrics_port: int | None,
        held: Callable[[], list[str]] = held_delivery_tags,
    ) -> None:
        self.client, self.name, self.resident, self.loads = client, name, resident, loads
        self.ttl_s, self.metrics_port, self.held = ttl_s, metrics_port, held

    def run_once(self) -> WorkerBeat | None:
        """Refresh, then announce; ``None`` until the engine is up (a worker without one takes no jobs)."""
        tags = self.held()
        heartbeat.refresh_visibility(self.client, tags)
        name = self.name()
        if name is None:
            return None
        beat = WorkerBeat(
            name=name,
            at=time.time(),
            resident=sorted(self.resident()),
            holding=len(tags),
            loads=self.loads(),
            metrics_port=self.metrics_port,
        )
        heartbeat.announce(self.client, beat, ttl_s=self.ttl_s)
        return beat
