"""The planner: the consumer bootstep that makes a running worker adapter-sticky.

Every ``plan_interval`` seconds, on the Celery consumer's timer (only that
thread may add and cancel queues):

1. read the queues that have work, from the backlog index, and the adapters
   resident in the engine (:class:`QueueReader`: depth, oldest age,
   interactive backlog, when any worker last served it, in a bounded number
   of commands however many adapters are registered);
2. ask the pure policy (:func:`workers.sticky.choose_queues`) which queues
   to consume, and add / cancel consumers to match
   (``Consumer.add_task_queue`` / ``cancel_task_queue``); messages already
   reserved from a cancelled queue still run.

Planning is frequent because a worker whose chosen queues drained sits idle
until the next plan. A newly registered adapter needs no notice: its first
job's publish puts it in the index, and the next tick sees it. Liveness and
repair are not the planner's: they are services of their own
(:mod:`workers.services.heartbeat`, :mod:`workers.services.reconciler`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis
from celery import bootsteps

from workers.contract import backlog
from workers.contract.broker import QueueState, read_states
from workers.contract.names import adapter_of_queue, queue_name
from workers.sticky import StickyConfig, choose_queues

log = logging.getLogger(__name__)


def plan(
    states: Sequence[QueueState], *, resident: Collection[str], consuming: Collection[str], config: StickyConfig
) -> tuple[list[str], list[str]]:
    """Queues to add and queues to cancel so the worker consumes what the policy chose.

    Resident adapters' queues stay consumed while there is room (a new job
    for them needs no swap), and nothing changes while no queue has backlog.
    """
    mine = [a for q in consuming if (a := adapter_of_queue(q)) is not None]
    chosen = choose_queues(states, resident=resident, config=config, consuming=mine)
    if not chosen:
        return [], []
    wanted = list(chosen)
    for adapter in sorted(resident):
        if len(wanted) < config.slots and adapter not in wanted:
            wanted.append(adapter)
    want = {queue_name(a) for a in wanted}
    ours = {q for q in consuming if adapter_of_queue(q) is not None}
    return sorted(want - ours), sorted(ours - want)


def prefetch_for(states: Sequence[QueueState], *, consuming: Collection[str], initial: int, chunk_jobs: int) -> int:
    """Messages the worker may hold: ``initial`` (rows' worth of single-job messages), or, while the
    queues it consumes wait with bulk chunks only, as many chunks as hold about the same jobs.

    A chunk carries ``chunk_jobs`` jobs; at the full prefetch a worker would reserve ``initial`` of
    them (hundreds of jobs over many adapters), mixing more adapters into its batches than it has
    slots and leaving other workers nothing to take. Any interactive message keeps the full
    prefetch, so its latency does not suffer."""
    mine = [s for s in states if queue_name(s.adapter) in consuming]
    interactive = sum(s.interactive for s in mine)
    bulk = sum(s.depth - s.interactive for s in mine)
    if interactive or not bulk or chunk_jobs <= 1:
        return initial
    return max(2, math.ceil(initial / chunk_jobs))


class PrefetchControl:
    """Moves a consumer's prefetch (a kombu ``QoS``) by differences only, so Celery's own
    adjustments (it raises the prefetch while it holds ETA tasks) stay as they are."""

    def __init__(self) -> None:
        self.reduced = 0  # how far this control has lowered the prefetch

    def apply(self, qos: Any, *, initial: int, want: int) -> bool:
        """Aim at ``want`` messages; returns whether the prefetch changed."""
        delta = (initial - want) - self.reduced
        if not delta:
            return False
        if delta > 0:
            qos.decrement_eventually(delta)
        else:
            qos.increment_eventually(-delta)
        self.reduced += delta
        qos.update()
        return True


def resize_prefetch(
    c: Any, control: PrefetchControl, seen: Sequence[QueueState], consuming: set[str], *, chunk_jobs: int
) -> None:
    """Aim the Celery consumer ``c``'s prefetch at what the queues it now consumes call for."""
    initial = c.initial_prefetch_count
    want = prefetch_for(seen, consuming=consuming, initial=initial, chunk_jobs=chunk_jobs)
    if c.qos is not None and control.apply(c.qos, initial=initial, want=want):
        log.info("prefetch now %d messages", c.qos.value)


def with_service(states: Sequence[QueueState], served_at: Mapping[str, float]) -> list[QueueState]:
    """The states with how long ago each queue was last served (as the queue's age when never)."""
    now = time.time()
    return [
        replace(s, served_ago_s=max(0.0, now - served_at[s.adapter])) if s.adapter in served_at else s for s in states
    ]


class QueueReader:
    """What one plan tick reads, in commands bounded by the work in flight, not by what is registered.

    The backlog index (one ``ZRANGE`` of at most ``limit`` adapters, longest waiting first), then
    the state of those queues (one pipelined round trip). Indexed queues found empty are dropped
    from the index (atomically, see :func:`workers.contract.backlog.drop_drained`); the others'
    marks move to their oldest message, so the read window follows the real waits. Every
    ``resident_every`` ticks the queues of the adapters resident in the engine are read too, even
    when not indexed, and marked if they hold work: a message kombu restored by itself (a dead
    worker's) is then seen within about a second wherever its adapter is loaded, and the index
    repaired, instead of waiting for the reconciler.
    """

    def __init__(self, client: redis.Redis, *, limit: int, resident_every: int = 10) -> None:
        self.client, self.limit, self.resident_every = client, limit, resident_every
        self.ticks = 0
        self._pulled: set[str] = set()
        self._lock = threading.Lock()

    def pulled(self, adapter: str) -> None:
        """A message of ``adapter``'s queue reached this worker (called from task threads); the next
        read records it as served, for every worker's starvation bound (:mod:`workers.sticky`)."""
        with self._lock:
            self._pulled.add(adapter)

    def read(self, resident: Collection[str]) -> list[QueueState]:
        with self._lock:
            pulled, self._pulled = sorted(self._pulled), set()
        backlog.mark_served(self.client, pulled, now=time.time())
        indexed = [adapter for adapter, _ in backlog.waiting(self.client, limit=self.limit)]
        self.ticks += 1
        extra = sorted(set(resident) - set(indexed)) if self.ticks % self.resident_every == 0 else []
        seen = with_service(read_states(self.client, indexed + extra), backlog.served_at(self.client, indexed + extra))
        drained = [s.adapter for s in seen[: len(indexed)] if s.depth == 0]
        if drained:
            backlog.drop_drained(self.client, drained)
        now = time.time()
        backlog.refresh(self.client, {s.adapter: now - s.oldest_age_s for s in seen[: len(indexed)] if s.depth})
        found = {s.adapter: now - s.oldest_age_s for s in seen[len(indexed) :] if s.depth}
        if found:
            log.warning("queues with work missing from the backlog index: %s; marked", sorted(found))
            backlog.mark(self.client, found)
        return seen


def make_planner(
    *,
    read: Callable[[Collection[str]], list[QueueState]],
    resident: Callable[[], set[str]],
    config: StickyConfig,
    plan_interval: float,
    chunk_jobs: int = 16,
) -> type[bootsteps.StartStopStep]:
    class Planner(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None
            self.prefetch = PrefetchControl()

        def start(self, c: Any) -> None:
            self.tick(c)
            self.tref = c.timer.call_repeatedly(plan_interval, self.tick, (c,), priority=10)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

        def tick(self, c: Any) -> None:
            try:
                consuming = {q.name for q in c.task_consumer.queues} if c.task_consumer else set()
                held = resident()
                seen = read(held)
                add, cancel = plan(seen, resident=held, consuming=consuming, config=config)
            except Exception:  # Redis briefly unreachable: try next tick
                log.warning("planner tick failed", exc_info=True)
                return
            for queue in add:
                log.info("consuming %s", queue)
                c.add_task_queue(queue)
            for queue in cancel:
                log.info("no longer consuming %s", queue)
                c.cancel_task_queue(queue)
            resize_prefetch(c, self.prefetch, seen, (consuming | set(add)) - set(cancel), chunk_jobs=chunk_jobs)

    return Planner
