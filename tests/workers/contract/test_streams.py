"""Token streams against a real Redis: deltas in order, read after an id, trimmed and expiring; a
writer that cannot reach Redis drops deltas without stalling the engine."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis

from gateway.processes import free_port
from workers.contract import streams
from workers.contract.names import STREAM_MAXLEN, STREAM_TTL_S, stream_key
from workers.contract.notify import Notifier, push_client
from workers.contract.streams import Delta, DeltaWriter, StreamEntry


def read_all(redis_url: str, job_id: str, *, after: str = "0-0", block_ms: int = 10) -> list[StreamEntry]:
    async def main() -> list[StreamEntry]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await streams.read(client, job_id, after=after, block_ms=block_ms)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_deltas_of_one_forward_are_read_back_in_order_then_the_end(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(stream_key("a"), stream_key("b"))
    write = DeltaWriter(client)
    write([Delta("a", 0, "Hé"), Delta("b", 0, "x")])
    write([Delta("a", 2, "llo")])
    Notifier(client).recorded(["a"], streamed=["a"])
    entries = read_all(redis_url, "a")
    assert [(e.pos, e.text, e.end) for e in entries] == [(0, "Hé", False), (2, "llo", False), (0, "", True)]
    assert read_all(redis_url, "a", after=entries[0].id)[0].text == "llo"  # a reader resumes after an id
    assert 0 < client.ttl(stream_key("a")) <= STREAM_TTL_S


def test_a_stream_is_trimmed_to_about_its_bound(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(stream_key("long"))
    write = DeltaWriter(client)
    for pos in range(3 * STREAM_MAXLEN):
        write([Delta("long", pos, "x")])
    assert STREAM_MAXLEN <= client.xlen(stream_key("long")) < 2 * STREAM_MAXLEN


def test_reading_a_stream_that_has_nothing_yet_waits_its_block_and_returns_nothing(redis_url: str) -> None:
    started = time.monotonic()
    assert read_all(redis_url, "never-written", block_ms=200) == []
    assert 0.15 < time.monotonic() - started < 2


def test_a_writer_without_redis_drops_deltas_and_then_pauses_instead_of_stalling() -> None:
    write = DeltaWriter(push_client(f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    write([Delta("a", 0, "x")])  # fails once, quickly
    for pos in range(1, 100):
        write([Delta("a", pos, "x")])  # paused: no further attempts
    assert time.monotonic() - started < 1.5
