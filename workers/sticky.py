"""Which adapter queues a worker consumes: the adapter-sticky policy.

Pure function over plain data (no Redis, no Celery, no torch). The
consumer bootstep (``workers.services.planner``) feeds it the queues' state and
the adapters resident in the engine, and consumes exactly what it returns.

The engine runs mixed batches: rows of up to ``slots`` different adapters
share one step, so serving several adapters together costs nothing; what
costs is a swap, copying an adapter that is not in a slot into one (it stalls
the running batch, and evicts an adapter that may be wanted again). The
rules, in order:

1. **Overdue first.** A queue that has gone unserved for ``max_wait_s`` is
   taken before anything else, most overdue first. Unserved means since the
   later of its oldest message's enqueue and the last time any worker
   consumed it (interactive messages count ``interactive_weight`` times
   that). This is the starvation bound: a waiting queue becomes overdue
   after ``max_wait_s`` at most and then outranks every queue served more
   recently. Counting from the last service, not only from the oldest
   message, matters in a burst: there every message is about equally old,
   and a bound on message age alone makes every queue overdue at once and
   rotates the slots on every tick (measured: 232 adapter loads per 1,000
   jobs in ``bench/sticky.py``'s burst, against 9 with this rule).
2. **Sticky.** Queues the worker consumes now, then queues of adapters
   resident in the engine, while they have backlog: no new swap is needed
   to serve them (a queue just chosen is not resident until its first rows
   load, and dropping it then would waste that swap).
3. **Fill the batch with what pays.** While the queues chosen so far hold
   fewer jobs than a batch (``batch_rows``: the worker has spare places),
   other queues with backlog join the mixed batch, oldest first, if their
   swap pays: a free slot (nothing is evicted), ``min_swap_depth`` jobs (the
   swap is amortised), or a job that already waited ``swap_after_s`` (about a
   plan tick: in a mixed-batch engine a tail adapter rarely gathers more
   jobs by waiting longer, so waiting would only add wait). A worker with nothing else to do takes any
   backlog (work-conserving: a swap then delays nobody).

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
    min_swap_depth: int = 4  # a non-resident queue holding this many jobs is worth a swap at once

    interactive_weight: float = 4.0  # interactive jobs become overdue this many times sooner
    swap_after_s: float = 0.1  # a non-resident queue whose oldest job waited this long (a plan tick) is worth a swap


def urgency(queue: QueueState, config: StickyConfig) -> float:
    """Effective time unserved, in seconds; ``>= max_wait_s`` means overdue."""
    weight = config.interactive_weight if queue.interactive > 0 else 1.0
    return min(queue.oldest_age_s, queue.served_ago_s) * weight


def swap_pays(queue: QueueState, config: StickyConfig, *, free_slots: int) -> bool:
    """Whether serving a non-resident queue is worth copying its adapter into a slot now."""
    return free_slots > 0 or queue.depth >= config.min_swap_depth or urgency(queue, config) >= config.swap_after_s


def choose_queues(
    queues: Sequence[QueueState],
    *,
    resident: Collection[str],
    config: StickyConfig,
    consuming: Collection[str] = (),
) -> list[str]:
    """Adapters whose queues to consume, in priority order, at most ``config.slots``.

    ``consuming``: the adapters whose queues the worker consumes now (the last choice)."""
    backlog = sorted(
        (q for q in queues if q.depth > 0),
        key=lambda q: (urgency(q, config), q.depth, q.adapter),
        reverse=True,
    )
    overdue = [q for q in backlog if urgency(q, config) >= config.max_wait_s]
    sticky = [q for q in backlog if q.adapter in consuming] + [
        q for q in backlog if q.adapter in resident and q.adapter not in consuming
    ]
    chosen: dict[str, QueueState] = {}
    for queue in (*overdue, *sticky):
        if len(chosen) < config.slots:
            chosen.setdefault(queue.adapter, queue)
    free_slots = max(0, config.slots - len(resident))
    fill = [q for q in backlog if q.adapter not in chosen and swap_pays(q, config, free_slots=free_slots)]
    for queue in fill or ([] if chosen else backlog):
        if len(chosen) >= config.slots or sum(q.depth for q in chosen.values()) >= config.batch_rows:
            break
        chosen[queue.adapter] = queue
    return list(chosen)
