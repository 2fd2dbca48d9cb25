"""The backlog index against a real Redis: marks, bounded reads, and the drop that never loses a queue."""

from __future__ import annotations

import threading

import redis

from workers.contract import backlog
from workers.contract.names import KOMBU_SEP, queue_name


def test_a_mark_keeps_the_time_the_queue_started_waiting(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    backlog.mark(client, {"a": 10.0, "b": 5.0})
    backlog.mark(client, {"a": 20.0, "c": 1.0})
    assert backlog.waiting(client, limit=10) == [("c", 1.0), ("b", 5.0), ("a", 10.0)]
    assert backlog.waiting(client, limit=2) == [("c", 1.0), ("b", 5.0)]  # bounded, longest waiting first


def test_a_queue_with_a_message_at_any_priority_is_not_dropped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    backlog.mark(client, {"urgent": 1.0, "bulk": 1.0, "empty": 1.0})
    client.lpush(queue_name("urgent"), "m")
    client.lpush(f"{queue_name('bulk')}{KOMBU_SEP}6", "m")  # kombu's list for priority 6
    assert backlog.drop_drained(client, ["urgent", "bulk", "empty"]) == ["empty"]
    assert sorted(a for a, _ in backlog.waiting(client, limit=10)) == ["bulk", "urgent"]


def test_a_drop_racing_a_publish_never_leaves_a_waiting_queue_out_of_the_index(redis_url: str) -> None:
    """The queue was just emptied by a consumer (still indexed); a publisher pushes then marks while a
    planner drops it as drained, both released at once. Whatever the interleaving, the message that
    arrived leaves its queue in the index. (A drop that reads the length, then removes the member,
    loses it when the push and the mark fall in between.)"""
    client = redis.Redis.from_url(redis_url)
    for round_ in range(40):
        client.flushdb()
        backlog.mark(client, {"x": 1.0})
        go = threading.Barrier(2)

        def publish(go: threading.Barrier = go) -> None:
            conn = redis.Redis.from_url(redis_url)
            go.wait()
            conn.lpush(queue_name("x"), "m")
            backlog.mark(conn, {"x": 2.0})

        def drop(go: threading.Barrier = go) -> None:
            conn = redis.Redis.from_url(redis_url)
            go.wait()
            backlog.drop_drained(conn, ["x"])

        threads = [threading.Thread(target=publish), threading.Thread(target=drop)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.llen(queue_name("x")) == 1
        assert [a for a, _ in backlog.waiting(client, limit=10)] == ["x"], f"lost in round {round_}"


def test_service_times_are_shared_kept_latest_and_forgotten_with_the_drained_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    backlog.mark(client, {"a": 1.0, "b": 1.0})
    client.lpush(queue_name("b"), "m")
    backlog.mark_served(client, ["a", "b"], now=20.0)
    backlog.mark_served(client, ["a"], now=10.0)  # another worker's older clock does not go back
    assert backlog.served_at(client, ["a", "b", "never"]) == {"a": 20.0, "b": 20.0}
    backlog.drop_drained(client, ["a", "b"])
    assert backlog.served_at(client, ["a", "b"]) == {"b": 20.0}
