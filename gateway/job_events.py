"""What a gateway process hears from Redis as it happens: jobs ending, and streamed jobs' tokens.

Requests that wait for a job (``GET /v1/jobs/{id}?wait=``, the synchronous
OpenAI endpoints, token relays) used to poll the registry every 50 to 500 ms
each. Now one subscription per process (:class:`~workers.contract.notify.DoneSubscriber`)
wakes them when a worker announces the job ended, and a waiting request reads
the registry once when it starts and once per wake-up.

What notifications can miss (a worker that could not publish, a gateway
that was disconnected) is found by a sweep: one registry query for every
waiting job at once, every ``LORAQ_WAIT_FALLBACK_S`` (every ``OUTAGE_SWEEP_S``
while the subscription is down, and at once when it is back). So the
database's load does not grow with the number of waiting clients, and a lost
notification costs at most the fallback delay.

The subscriber and the sweep run on threads of their own, not on the app's
event loop: they serve whichever loop a request waits on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.orm import Session, sessionmaker

from registry import jobs
from registry.models import Tenant
from registry.schemas import TERMINAL_STATUSES, JobView
from workers.contract.notify import DoneSubscriber, Waiters

log = logging.getLogger(__name__)

OUTAGE_SWEEP_S = 0.5  # how often waiting jobs are read while notifications cannot arrive
SWEEP_CHUNK = 500  # job ids per query of a sweep


class JobEvents:
    """The process's subscriber and sweep; :meth:`wait` for a job to end, :meth:`stream_client` to read a
    streamed job's tokens.

    :meth:`start` and :meth:`stop` run in the app's lifespan. They count: a test client that runs the
    lifespan again inside a running app does not stop the threads the outer one still uses.
    """

    def __init__(
        self,
        *,
        redis_url: str,
        sessions: sessionmaker[Session],
        fallback_s: float,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.sessions = sessions
        self.fallback_s = fallback_s
        self.waiters = Waiters()
        self._sweep_now = threading.Event()
        self.subscriber = DoneSubscriber(redis_url, self.waiters, on_subscribed=self._sweep_now.set, on_done=on_done)
        self.sweeps = 0  # registry queries made by sweeps, for tests and the benchmark
        self._lock = threading.Lock()
        self._users = 0
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self._stopping.clear()
            self.subscriber.start()
            self._sweeper = threading.Thread(target=self._sweep_loop, name="loraq-wait-sweep", daemon=True)
            self._sweeper.start()

    def stop(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._stopping.set()
            self._sweep_now.set()
            self.subscriber.stop()
            if self._sweeper is not None:
                self._sweeper.join(5)

    async def wait(self, *, tenant: Tenant, job_id: str, timeout_s: float) -> JobView:
        """The job once it ends, or as it is when ``timeout_s`` runs out. It is watched before the first
        read, so a notification between that read and the wait is not lost."""
        deadline = time.monotonic() + timeout_s
        with self.waiters.watch(job_id) as woken:
            while True:
                woken.clear()
                view = await run_in_threadpool(self._read, tenant, job_id)
                remaining = deadline - time.monotonic()
                if view.status in TERMINAL_STATUSES or remaining <= 0:
                    return view
                with suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), remaining)

    def stream_client(self) -> aioredis.Redis:
        """A client for one token relay, on the caller's event loop (close it after). Relays block in
        XREAD for up to a second each, so the socket timeout is longer; no retries: a relay that cannot
        read ends with the recorded result instead of waiting on Redis."""
        return aioredis.Redis.from_url(
            self.redis_url,
            decode_responses=True,
            socket_connect_timeout=1,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def sweep(self) -> int:
        """Wake the requests waiting on jobs the registry says ended; returns how many were woken."""
        watched = self.waiters.watched()
        return self.waiters.wake(self._ended(watched)) if watched else 0

    def _read(self, tenant: Tenant, job_id: str) -> JobView:
        with self.sessions() as session:
            return jobs.get_view(session, tenant=tenant, job_id=job_id)

    def _ended(self, job_ids: list[str]) -> set[str]:
        """Of ``job_ids``, those no longer queued or running (or gone)."""
        live: set[str] = set()
        with self.sessions() as session:
            for i in range(0, len(job_ids), SWEEP_CHUNK):
                live |= set(jobs.live_attempts(session, job_ids=job_ids[i : i + SWEEP_CHUNK]))
                self.sweeps += 1
        return set(job_ids) - live

    def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            interval = self.fallback_s if self.subscriber.connected else min(self.fallback_s, OUTAGE_SWEEP_S)
            self._sweep_now.wait(interval)
            self._sweep_now.clear()
            try:
                self.sweep()
            except Exception:  # the registry is down: waiting requests time out or wake on notifications
                log.warning("could not read the waiting jobs' statuses", exc_info=True)
