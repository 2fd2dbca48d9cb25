"""Which adapter queues a worker consumes: the adapter-sticky policy.

Pure function over plain data (no Redis, no Celery, no torch). The
consumer bootstep (``workers.services.planner``) feeds it the queues' state and
the adapters resident in the engine, and consumes exactly what it returns.

The rules, in order:

1. **Overdue first.** A queue whose oldest message has waited ``max_wait_s``
   (interactive messages count ``interactive_weight`` times their age) is
   taken before anything else, most overdue first. This is the starvation
   bound: a waiting queue becomes overdue after ``max_wait_s`` at most and
   then outranks every queue whose oldest job is younger.
2. **Sticky.** Queues of adapters already resident in the engine, while
   they have backlog: no swap needed to serve them.
3. **Fill, only when needed.** If the queues chosen so far hold fewer jobs
   than a batch (``batch_rows``), other queues with backlog are added,
   deepest first (a deep queue amortises its swap over many jobs), until
   they do; a queue that would need a swap is only worth it with at least
   ``min_swap_depth`` jobs (or while the engine has a free slot, or when the
   worker has nothing else to do: then a swap delays nobody). A worker
   never swaps an adapter in while its resident ones can fill the batch,
   and a shallow queue waits until it is overdue (rule 1), then goes
   together with the others that became overdue.

At most ``slots`` queues are consumed, so every pulled batch fits the
engine's adapter slots without thrashing. Each worker runs the policy on its
own resident set; workers share nothing but the Redis queues.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from workers.contract.broker import QueueState


@dataclass(frozen=True)
class StickyConfig:
    slots: int  # adapters the engine holds at once (max_loras)
    max_wait_s: float  # a queue is served once its oldest job has waited this long
    batch_rows: int = 16  # jobs one batch takes; fill queues are added only to reach it
    min_swap_depth: int = 4  # a non-resident queue must hold this many jobs to be worth a swap

    interactive_weight: float = 4.0  # interactive jobs become overdue this many times sooner


def urgency(queue: QueueState, config: StickyConfig) -> float:
    """Effective age in seconds; ``>= max_wait_s`` means overdue."""
    weight = config.interactive_weight if queue.interactive > 0 else 1.0
    return queue.oldest_age_s * weight


def choose_queues(queues: Sequence[QueueState], *, resident: Collection[str], config: StickyConfig) -> list[str]:
    """Adapters whose queues to consume, in priority order, at most ``config.slots``."""
    backlog = sorted(
        (q for q in queues if q.depth > 0),
        key=lambda q: (urgency(q, config), q.depth, q.adapter),
        reverse=True,
    )
    overdue = [q for q in backlog if urgency(q, config) >= config.max_wait_s]
    sticky = [q for q in backlog if q.adapter in resident]
    free_slots = max(0, config.slots - len(resident))
    idle = not overdue and not sticky  # nothing else to do: a swap costs no other queue anything
    fill = [
        q
        for q in sorted(backlog, key=lambda q: (q.depth, urgency(q, config)), reverse=True)
        if q.adapter in resident or q.depth >= config.min_swap_depth or free_slots > 0 or idle
    ]
    chosen: dict[str, QueueState] = {}
    for queue in (*overdue, *sticky):
        if len(chosen) < config.slots:
            chosen.setdefault(queue.adapter, queue)
    for queue in fill:
        if len(chosen) >= config.slots or sum(q.depth for q in chosen.values()) >= config.batch_rows:
            break
        chosen.setdefault(queue.adapter, queue)
    return list(chosen)
