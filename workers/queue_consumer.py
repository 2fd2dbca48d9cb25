"""A consumer bootstep that makes a running worker consume new adapter queues.

Adapters are registered while workers run; every ``interval`` seconds this
step asks ``wanted()`` for adapter names and adds ``lora.<name>`` consumers
it lacks (``Consumer.add_task_queue``). The sticky policy (which queues to
hold, which to cancel) replaces ``wanted`` later; the mechanism stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from registry.queues import queue_name

log = logging.getLogger(__name__)


def queues_to_add(wanted: list[str], consuming: set[str]) -> list[str]:
    """Queue names to start consuming: wanted adapters whose queue is not consumed yet."""
    return [q for q in (queue_name(n) for n in wanted) if q not in consuming]


def make_queue_refresher(wanted: Callable[[], list[str]], interval: float) -> type[bootsteps.StartStopStep]:
    class AdapterQueueRefresher(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, c: Any) -> None:
            self.refresh(c)
            self.tref = c.timer.call_repeatedly(interval, self.refresh, (c,), priority=10)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

        def refresh(self, c: Any) -> None:
            try:
                names = wanted()
            except Exception:  # the registry may be briefly unreachable; try next tick
                log.warning("could not read adapter names from the registry", exc_info=True)
                return
            consuming = {q.name for q in c.task_consumer.queues} if c.task_consumer else set()
            for queue in queues_to_add(names, consuming):
                log.info("consuming %s", queue)
                c.add_task_queue(queue)

    return AdapterQueueRefresher
