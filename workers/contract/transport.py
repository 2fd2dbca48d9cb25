"""kombu's Redis transport, with every message it puts back marked in the backlog index.

kombu restores a message by itself: a dead worker's unacknowledged messages
once their visibility clock runs out, a warm shutdown's reserved ones, a
rejected one. It pushes them back into their adapter's list without telling
anyone, so a queue the planner had dropped from the backlog index (it was
empty) would hold work that no worker looks at, until new work for that
adapter arrived or the reconciler's repair found a job of it unfinished past
its grace. A restored duplicate of a job already recorded is not unfinished:
it stayed there, and its Celery result stayed ``STARTED``.

Here the restore also marks the adapter (``ZADD NX``), in the same Redis
transaction as the push, so a restored message is as visible to planning
as a published one. Selected for ``redis://`` brokers by
:func:`workers.contract.celery_app.make_celery`.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.transport import redis as kombu_redis

from workers.contract.names import BACKLOG_KEY, adapter_of_queue


class Channel(kombu_redis.Channel):
    def _do_restore_message(
        self, payload: dict[str, Any], exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)  # type: ignore[no-untyped-call]
        now = time.time()
        queues: list[str] = self._lookup(exchange, routing_key)  # type: ignore[no-untyped-call]
        marks = {a: now for queue in queues if (a := adapter_of_queue(queue))}
        if marks:
            pipe.zadd(BACKLOG_KEY, marks, nx=True)


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
