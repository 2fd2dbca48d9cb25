"""The heartbeat service against a real Redis: the typed record it announces, the clock it keeps."""

from __future__ import annotations

import time

import redis

from workers.contract import heartbeat
from workers.contract.celery_app import Role, make_celery
from workers.contract.heartbeat import WorkerBeat
from workers.contract.names import UNACKED_INDEX, worker_key
from workers.contract.settings import QueueSettings
from workers.services.heartbeat import Heartbeat, held_delivery_tags
from workers.services.periodic import Periodic


def service(client: redis.Redis, *, name: str | None, held: list[str]) -> Heartbeat:
    return Heartbeat(
        client=client,
        name=lambda: name,
        resident=lambda: {"upper", "rot13"},
        loads=lambda: 4,
        ttl_s=3,
        metrics_port=9100,
        held=lambda: held,
    )


def test_announces_a_record_the_gateway_reads_back_with_every_field(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    beat = service(client, name="w1@host", held=["t1", "t2"]).run_once()

    [read] = heartbeat.read_all(client)
    assert read == beat
    assert (read.name, read.resident, read.holding, read.loads, read.metrics_port) == (
        "w1@host",
        ["rot13", "upper"],
        2,
        4,
        9100,
    )
    assert 0 < client.ttl(worker_key("w1@host")) <= 3  # a worker that stops beating vanishes


def test_refreshes_only_the_held_messages_that_are_still_unacknowledged(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.zadd(UNACKED_INDEX, {"held": 1.0, "other": 1.0})
    service(client, name=None, held=["held", "acked-meanwhile"]).run_once()

    assert client.zscore(UNACKED_INDEX, "held") > time.time() - 5  # type: ignore[operator]
    assert client.zscore(UNACKED_INDEX, "other") == 1.0  # another worker's message keeps its clock
    assert client.zscore(UNACKED_INDEX, "acked-meanwhile") is None  # never re-added
    assert heartbeat.read_all(client) == []  # no record before the engine is up


def test_a_record_it_cannot_read_is_skipped_not_fatal(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set(worker_key("broken"), b"{not json")
    client.set(worker_key("old"), b'{"name": "old"}')  # no "at": an unknown shape
    heartbeat.announce(client, WorkerBeat(name="ok", at=time.time()), ttl_s=5)
    assert [b.name for b in heartbeat.read_all(client)] == ["ok"]


def test_a_periodic_service_keeps_running_after_a_failing_run() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("redis away")

    runner = Periodic("flaky", flaky, interval_s=0.01)
    runner.start()
    deadline = time.monotonic() + 5
    while runner.runs < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop()
    assert runner.runs >= 3 and len(calls) >= 3


def test_the_tags_it_refreshes_are_those_of_the_messages_a_real_worker_reserved(redis_url: str) -> None:
    """Tags read from Celery's own Request built from a message kombu delivered from Redis: they are
    the keys of the transport's visibility clock, so a long job is never delivered twice."""
    from celery.worker import state
    from celery.worker.request import Request

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    app = make_celery(QueueSettings(redis_url=redis_url), role=Role.WORKER)

    @app.task(name="loraq.test_long_job")  # type: ignore[untyped-decorator]
    def long_job() -> None: ...

    app.send_task("loraq.test_long_job", args=[], queue="heartbeat-test")
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("heartbeat-test")
        try:
            message = queue.get(timeout=5)
            request = Request(message, app=app)
            state.task_reserved(request)
            try:
                [tag] = held_delivery_tags()
                assert tag == message.delivery_tag
                client.zadd(UNACKED_INDEX, {tag: 1.0})  # as if delivered long ago
                service(client, name=None, held=held_delivery_tags()).run_once()
                assert client.zscore(UNACKED_INDEX, tag) > time.time() - 5  # type: ignore[operator]
            finally:
                state.task_ready(request)
            assert held_delivery_tags() == []
            message.ack()
        finally:
            queue.close()
