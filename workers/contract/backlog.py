"""The backlog index: which adapter queues have waiting work, so planning costs O(queues with work).

A sorted set, ``loraq:backlog``: member = adapter name, score = when its
queue went from empty to waiting (epoch seconds, the first job's enqueue
time). Readers take it oldest first with a bounded ``ZRANGE`` instead of
reading every registered adapter's queue: 10,000 registered adapters cost
an idle worker one command a plan tick, as 10 do.

Who writes it:

- every publisher, right after the message is in its list (:class:`Publisher`:
  the gateway, bulk ingest, the reconciler, a worker's retries), with
  ``ZADD NX`` (an older score is kept);
- the planner, which removes a queue it found empty with :func:`drop_drained`:
  one Lua script that checks every priority list of the queue and removes the
  member only if all are empty, atomically. A publisher pushes before it
  marks, so either the script runs before the push (and the mark that follows
  re-adds it) or after it (and sees the message): a queue with work is never
  left out by the race between the two.
- kombu's restores (:mod:`workers.contract.transport`): a message put back
  by kombu itself (a dead worker's, after the visibility timeout) is marked
  in the transaction of its push;
- the reconciler, which re-marks the adapters of jobs that waited past its
  grace with a message present: the repair path for a mark that failed
  after its push.

Beside it, ``loraq:served``: member = adapter, score = when a worker last
consumed its queue (every planner writes the queues it consumes, each tick;
a drained queue's entry goes with its index entry). The starvation bound
counts a queue's wait from the later of its oldest message and its last
service, so a burst (every message equally old) does not make every queue
overdue at once, and workers see each other's service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from workers.contract.names import BACKLOG_KEY, KOMBU_SEP, PRIORITY_STEPS, QUEUE_PREFIX, SERVED_KEY

# KEYS[1]: the index, KEYS[2]: the served times. ARGV: prefix, separator, n steps, the steps, then adapters.
_DROP_DRAINED = """
local prefix, sep, nsteps = ARGV[1], ARGV[2], tonumber(ARGV[3])
local dropped = {}
for i = 4 + nsteps, #ARGV do
    local adapter = ARGV[i]
    local waiting = 0
    for s = 1, nsteps do
        local step = ARGV[3 + s]
        local key = prefix .. adapter
        if step ~= "0" then key = key .. sep .. step end
        waiting = waiting + redis.call("LLEN", key)
    end
    if waiting == 0 and redis.call("ZREM", KEYS[1], adapter) == 1 then
        redis.call("ZREM", KEYS[2], adapter)
        table.insert(dropped, adapter)
    end
end
return dropped
"""


def mark(client: redis.Redis, waiting_since: Mapping[str, float]) -> None:
    """Note that these adapters' queues have work (call after the push); an older mark is kept."""
    if waiting_since:
        client.zadd(BACKLOG_KEY, dict(waiting_since), nx=True)


def refresh(client: redis.Redis, waiting_since: Mapping[str, float]) -> None:
    """Move the marks of queues still indexed to when their oldest message was enqueued: a queue that
    never drains would otherwise keep its first mark and hold its place at the head of every read,
    and queues past the read limit would never be read."""
    if waiting_since:
        client.zadd(BACKLOG_KEY, dict(waiting_since), xx=True)


def waiting(client: redis.Redis, *, limit: int) -> list[tuple[str, float]]:
    """Up to ``limit`` adapters with waiting work, longest waiting first, with when they started waiting."""
    rows: list[tuple[bytes, float]] = client.zrange(BACKLOG_KEY, 0, limit - 1, withscores=True)  # type: ignore[assignment]
    return [(name.decode(), float(score)) for name, score in rows]


def size(client: redis.Redis) -> int:
    return int(client.zcard(BACKLOG_KEY))


def drop_drained(client: redis.Redis, adapters: Sequence[str]) -> list[str]:
    """Remove from the index those of ``adapters`` whose queue is empty now (atomically); returns them."""
    if not adapters:
        return []
    steps = [str(s) for s in PRIORITY_STEPS]
    args = [QUEUE_PREFIX, KOMBU_SEP, str(len(steps)), *steps, *adapters]
    dropped: list[bytes] = client.eval(_DROP_DRAINED, 2, BACKLOG_KEY, SERVED_KEY, *args)
    return [d.decode() for d in dropped]


def mark_served(client: redis.Redis, adapters: Sequence[str], *, now: float) -> None:
    """Note that a worker consumes these adapters' queues now."""
    if adapters:
        client.zadd(SERVED_KEY, dict.fromkeys(adapters, now), gt=True)


def served_at(client: redis.Redis, adapters: Sequence[str]) -> dict[str, float]:
    """When each of ``adapters``' queues was last consumed by any worker (absent: never, or drained since)."""
    if not adapters:
        return {}
    scores: list[float | None] = client.zmscore(SERVED_KEY, list(adapters))
    return {a: float(s) for a, s in zip(adapters, scores, strict=True) if s is not None}
