"""Re-publish accepted jobs whose message is gone: nothing accepted is ever lost.

kombu's Redis transport takes a message off its list (``BRPOP``) and only
then records it as unacknowledged; a worker killed with SIGKILL between the
two loses that message (seen in the kill -9 test: 1 job in 500, once). A
publish that failed after the row was written leaves the same state. So,
every ``interval`` seconds, one worker at a time (a Redis lock):

1. read up to ``limit`` jobs the registry still has unfinished after
   ``grace`` seconds (the bound on one run's cost);
2. look for their messages in their queues (every priority list) and in the
   transport's unacknowledged hash;
3. publish again those found nowhere, with the same task id, through the one
   publisher (so the message is the gateway's, ``argsrepr`` included).

Each pass also repairs the backlog index (:mod:`workers.contract.backlog`):
the queues of every adapter with a job waiting past the grace (one query,
O(adapters with live work), whatever the age order of their jobs) are read,
and those holding messages are marked.

A message popped by a live worker at that very moment is found nowhere too
and so runs twice; that is harmless because result recording is
exactly-once. ``grace`` must exceed the visibility timeout plus a restore
sweep, so a dead worker's messages are back in their queue before anyone
looks for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta

import redis
from sqlalchemy.orm import Session, sessionmaker

from registry import jobs
from registry.models import utcnow
from registry.schemas import Priority
from workers.contract.broker import present_ids, read_states
from workers.contract.messages import Publisher
from workers.contract.names import RECONCILE_LOCK

log = logging.getLogger(__name__)


def missing(expected: Iterable[str], present: set[str]) -> list[str]:
    """Jobs the registry expects a message for that no queue or worker holds."""
    return [job_id for job_id in expected if job_id not in present]


class Reconciler:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        client: redis.Redis,
        publisher: Publisher,
        grace_s: float,
        lock_s: int,
        limit: int = 1000,
    ) -> None:
        self.sessions, self.client, self.publisher = sessions, client, publisher
        self.grace_s, self.lock_s, self.limit = grace_s, lock_s, limit

    def run_once(self) -> list[str]:
        """One pass; returns the job ids published again (none when another worker holds the lock)."""
        if not self.client.set(RECONCILE_LOCK, "1", nx=True, ex=self.lock_s):
            return []
        older_than = utcnow() - timedelta(seconds=self.grace_s)
        with self.sessions() as session:
            stale = jobs.stale_queued(session, older_than=older_than, limit=self.limit)
            waiting = jobs.adapters_with_stale_jobs(session, older_than=older_than)
        self.repair_index(waiting)
        if not stale:
            return []
        present = present_ids(self.client, (task.adapter for task, _ in stale))
        lost = set(missing((task.job_id for task, _ in stale), present))
        for task, priority in stale:
            if task.job_id in lost:
                log.warning("job %s is unfinished with no message anywhere; publishing it again", task.job_id)
                self.publisher.publish(task, priority=Priority(priority))
        return sorted(lost)

    def repair_index(self, adapters: list[str]) -> list[str]:
        """Mark in the backlog index the queues of these adapters that hold messages: kombu restores a
        dead worker's messages without telling it, and a publisher's mark may have failed. One
        pipelined read of those queues (adapters with work that waited past the grace only)."""
        now = time.time()
        found = {s.adapter: now - s.oldest_age_s for s in read_states(self.client, adapters) if s.depth}
        self.publisher.mark(found)
        return sorted(found)
