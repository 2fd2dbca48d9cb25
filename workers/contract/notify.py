"""Completion notifications: a worker says which jobs it just recorded; waiting gateways wake.

Without them every waiting request polled the registry (50 → 500 ms), so a
result arrived up to half a second late and the database's load grew with
the number of waiting clients. Now the writer of an outcome publishes the
ended job ids on one pub/sub channel (``loraq:done``) once the transaction
has committed: one message per commit, however many jobs it ended (a batch,
a bulk chunk). Each gateway process holds one subscription
(:class:`DoneSubscriber`) and wakes the requests waiting on those ids
(:class:`Waiters`).

Pub/sub is fire-and-forget: a gateway that was disconnected, or a worker
that could not publish, loses the message. So a notification is only a
hint to read the registry now; the gateway still reads it on a slow
schedule for every waiting job at once, and at once after re-subscribing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.contract import streams
from workers.contract.names import DONE_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 2.0  # a subscriber that lost Redis retries at most this far apart
HEALTH_CHECK_S = 5.0  # an idle subscription is pinged this often, so a dead connection is noticed
STOP_CHECK_S = 0.5  # the subscriber's longest wait for a message: how soon it notices it should stop


def push_client(redis_url: str) -> redis.Redis:
    """The worker's client for what it tells gateways as it happens (token deltas from the engine's
    thread, notifications after a commit): short timeouts and no retries, so a Redis outage costs the
    engine or a batch's acknowledgement a second, not the default client's retries with back-off."""
    return redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def encode(job_ids: Sequence[str]) -> bytes:
    return orjson.dumps(list(job_ids))


def decode(payload: bytes | str) -> list[str]:
    """The job ids of one message; anything else (another publisher's noise) is no ids."""
    try:
        ids = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def publish_done(client: redis.Redis, job_ids: Sequence[str]) -> None:
    """Announce that ``job_ids`` ended (call after the commit). Raises :class:`redis.RedisError`."""
    if job_ids:
        client.publish(DONE_CHANNEL, encode(job_ids))


class Notifier:
    """A worker's announcements after it commits outcomes. Best effort: a message lost here costs a
    waiting client the gateway's fallback delay, never a result."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def recorded(self, job_ids: Sequence[str], *, streamed: Iterable[str] = ()) -> None:
        """``job_ids`` were committed; ``streamed`` (some of them) get their token stream's end marker
        first, so a reader that sees the end can read the result at once."""
        if not job_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for job_id in streamed:
            streams.add_end(pipe, job_id)
        pipe.publish(DONE_CHANNEL, encode(job_ids))
        try:
            pipe.execute()
        except Exception:  # best effort: the outcome is committed, and that is what counts
            log.warning(
                "could not announce %d recorded jobs; gateways find them on their fallback read",
                len(job_ids),
                exc_info=True,
            )


class Waiters:
    """Job id -> the events of the requests waiting on it, in one gateway process.

    A request registers before it reads the registry (:meth:`watch`), so a notification that lands
    between its read and its wait is not lost. :meth:`wake` may be called from any thread: each
    event is set on the event loop its request runs on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` may have ended; call from the request's event loop."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._events.setdefault(job_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiting = self._events.get(job_id, set())
                waiting.discard(entry)
                if not waiting:
                    self._events.pop(job_id, None)

    def wake(self, job_ids: Iterable[str]) -> int:
        """Set the events of every request waiting on one of ``job_ids``; returns how many."""
        with self._lock:
            entries = [entry for job_id in job_ids for entry in self._events.get(job_id, ())]
        for loop, event in entries:
            with suppress(RuntimeError):  # its loop has closed: nobody waits any more
                loop.call_soon_threadsafe(event.set)
        return len(entries)

    def watched(self) -> list[str]:
        """The job ids some request waits on now."""
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._events.values())


class DoneSubscriber:
    """The one subscription of a gateway process to ``loraq:done``, fanning messages out to ``waiters``.

    It runs on a thread of its own, not on the app's event loop, so it serves every loop that
    waits (a test client may run several) and never competes with request handling. It reconnects
    after a Redis outage (backing off to ``RECONNECT_MAX_S``) and calls ``on_subscribed`` each time
    the subscription is confirmed, so the caller can read what it may have missed meanwhile.
    ``connected`` says whether notifications are arriving now.
    """

    def __init__(
        self,
        redis_url: str,
        waiters: Waiters,
        *,
        on_subscribed: Callable[[], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.waiters = waiters
        self.on_subscribed = on_subscribed
        self.on_done = on_done  # told after every message (the webhook dispatcher: deliveries may be due)
        self.connected = False
        self.messages = 0  # received since start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loraq-done-subscriber", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.connected = False

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                if self.connected:
                    log.warning("lost the completion channel (%s); waiting requests poll until it is back", exc)
                    delay = 0.1
                self.connected = False
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _listen(self) -> None:
        client = redis.Redis.from_url(  # no retries: _run reconnects, with its own back-off
            self.redis_url,
            socket_connect_timeout=1,
            health_check_interval=HEALTH_CHECK_S,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8
        try:
            pubsub.subscribe(DONE_CHANNEL)
            while not self.connected and not self._stop.is_set():  # confirmed: from here on nothing is missed
                message = pubsub.get_message(timeout=STOP_CHECK_S)
                self.connected = message is not None and message["type"] == "subscribe"
            if self.connected:
                log.info("subscribed to the completion channel")
                self.on_subscribed()
            while not self._stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=STOP_CHECK_S)
                if message is not None and message["type"] == "message":
                    self.messages += 1
                    self.waiters.wake(decode(message["data"]))
                    if self.on_done is not None:
                        self.on_done()
        finally:
            pubsub.close()
            client.close()
