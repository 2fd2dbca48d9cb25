"""Completion notifications against a real Redis: one message per commit, fanned out to every waiter
(on its own event loop, from the subscriber's thread), and a subscriber that comes back after Redis does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

from gateway.processes import free_port, start_redis
from workers.contract.names import DONE_CHANNEL, stream_key
from workers.contract.notify import DoneSubscriber, Notifier, Waiters, decode, encode, push_client


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def with_subscriber(redis_url: str, body: Callable[[DoneSubscriber, list[float]], Awaitable[None]]) -> None:
    """Run ``body`` while a subscriber listens; it gets the times the subscription was confirmed."""

    async def main() -> None:
        subscribed: list[float] = []
        subscriber = DoneSubscriber(redis_url, Waiters(), on_subscribed=lambda: subscribed.append(time.monotonic()))
        subscriber.start()
        try:
            await until(lambda: bool(subscribed))
            await body(subscriber, subscribed)
        finally:
            subscriber.stop()

    asyncio.run(main())


def test_one_message_per_commit_wakes_every_request_waiting_on_its_jobs(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    counted = client.pubsub()
    counted.subscribe(DONE_CHANNEL)

    async def body(subscriber: DoneSubscriber, _: list[float]) -> None:
        waiters = subscriber.waiters
        with waiters.watch("a") as a1, waiters.watch("a") as a2, waiters.watch("b") as b, waiters.watch("c") as c:
            Notifier(client).recorded(["a", "b", "not-waited-on"])
            await until(lambda: a1.is_set() and a2.is_set() and b.is_set())
            await asyncio.sleep(0.05)
            assert not c.is_set()
        assert waiters.watched() == [] and len(waiters) == 0

    with_subscriber(redis_url, body)
    messages = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if (m := counted.get_message(ignore_subscribe_messages=True, timeout=0.1)) is not None:
            messages.append(decode(m["data"]))
    assert messages == [["a", "b", "not-waited-on"]]  # one message for the commit, not one per job


def test_streamed_jobs_get_their_end_marker_before_the_notification(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(stream_key("s"), stream_key("q"))
    Notifier(client).recorded(["s", "q"], streamed=["s"])
    assert [fields for _, fields in client.xrange(stream_key("s"))] == [{"end": "1"}]
    assert 0 < client.ttl(stream_key("s")) <= 300
    assert not client.exists(stream_key("q"))  # a job that did not stream gets no stream


def test_announcing_without_redis_neither_raises_nor_waits(tmp_path: Path) -> None:
    gone = push_client(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    Notifier(gone).recorded(["a"], streamed=["a"])
    assert time.monotonic() - started < 2


def test_the_subscriber_comes_back_after_a_redis_outage_and_asks_for_a_catch_up_read(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path / "r1", port=port, log=tmp_path / "r1.log")
    url = f"redis://127.0.0.1:{port}/0"

    async def body(subscriber: DoneSubscriber, subscribed: list[float]) -> None:
        nonlocal server
        assert subscriber.connected
        server.stop()
        await until(lambda: not subscriber.connected)
        server = start_redis(tmp_path / "r2", port=port, log=tmp_path / "r2.log")
        await until(lambda: len(subscribed) == 2)  # the caller reads what it may have missed meanwhile
        with subscriber.waiters.watch("after") as woken:
            Notifier(redis.Redis.from_url(url)).recorded(["after"])
            await until(woken.is_set)

    try:
        with_subscriber(url, body)
    finally:
        server.stop()


def test_a_message_that_is_not_a_list_of_ids_wakes_nobody() -> None:
    assert decode(encode(["x", "y"])) == ["x", "y"]
    assert decode(b"not json") == [] and decode(b'{"a": 1}') == [] and decode(b'["x", 3]') == ["x"]
