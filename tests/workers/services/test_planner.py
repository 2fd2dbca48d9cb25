"""Which queues a running worker adds and cancels (the plan the bootstep applies)."""

from __future__ import annotations

import json

import redis

from workers.contract import backlog
from workers.contract.broker import QueueState
from workers.contract.names import queue_name
from workers.services.planner import QueueReader, plan
from workers.sticky import StickyConfig

CONFIG = StickyConfig(slots=2, max_wait_s=10, batch_rows=4, min_swap_depth=2)


def q(adapter: str, depth: int, age: float = 1.0) -> QueueState:
    return QueueState(adapter=adapter, depth=depth, oldest_age_s=age if depth else 0.0)


def test_adds_the_chosen_queue_and_cancels_one_no_longer_wanted() -> None:
    add, cancel = plan(
        [q("a", 5), q("b", 0), q("c", 9)], resident={"a"}, consuming={"loraq.default", "lora.b"}, config=CONFIG
    )
    assert add == ["lora.a"]  # the resident queue fills a batch: no swap for c
    assert cancel == ["lora.b"]


def test_adds_another_queue_when_the_resident_one_cannot_fill_a_batch() -> None:
    add, _ = plan([q("a", 2), q("c", 9)], resident={"a"}, consuming=set(), config=CONFIG)
    assert add == ["lora.a", "lora.c"]


def test_never_cancels_queues_that_are_not_adapter_queues() -> None:
    _, cancel = plan([q("a", 5)], resident=set(), consuming={"loraq.default", "celery"}, config=CONFIG)
    assert cancel == []


def test_nothing_changes_while_no_queue_has_backlog() -> None:
    assert plan([q("a", 0), q("b", 0)], resident={"a"}, consuming={"lora.b"}, config=CONFIG) == ([], [])


def test_resident_queues_stay_consumed_while_there_is_room() -> None:
    add, cancel = plan([q("b", 5)], resident={"a"}, consuming={"lora.a"}, config=CONFIG)
    assert (add, cancel) == (["lora.b"], [])


def command_count(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_the_reader_reads_queues_with_work_and_resident_ones_never_the_registered_rest(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    for i in range(300):  # queues that once had work; the index forgot them when they drained
        client.set(f"registered-{i}", 1)
    client.lpush(queue_name("busy"), json.dumps({"body": ""}))
    backlog.mark(client, {"busy": 100.0, "drained": 50.0})
    reader = QueueReader(client, limit=64, resident_every=1)

    seen = reader.read({"resident"})

    assert [(s.adapter, s.depth) for s in seen] == [("drained", 0), ("busy", 1), ("resident", 0)]
    assert [a for a, _ in backlog.waiting(client, limit=10)] == ["busy"]  # the drained one was dropped


def test_a_resident_queue_with_work_missing_from_the_index_is_read_within_a_few_ticks_and_marked(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.lpush(queue_name("restored"), json.dumps({"body": ""}))  # as kombu restores a dead worker's message
    reader = QueueReader(client, limit=64, resident_every=3)
    assert [reader.read({"restored"}) for _ in range(2)] == [[], []]  # resident queues: every third tick
    assert [(s.adapter, s.depth) for s in reader.read({"restored"})] == [("restored", 1)]
    assert [a for a, _ in backlog.waiting(client, limit=10)] == ["restored"]


def test_a_queue_that_never_drains_gives_up_its_place_once_its_old_jobs_are_gone(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    backlog.mark(client, {"busy": 10.0, "newer": 50.0})  # busy started waiting first ...
    client.lpush(queue_name("busy"), json.dumps({"body": "", "properties": {}}))  # ... its old jobs ran
    client.lpush(queue_name("newer"), json.dumps({"body": "", "properties": {}}))
    reader = QueueReader(client, limit=1)
    reader.read(set())  # reads busy only: its oldest message's age is unknown here, so "now"
    assert [a for a, _ in backlog.waiting(client, limit=1)] == ["newer"]  # the next tick reads the other


def test_an_idle_tick_costs_the_same_few_commands_however_many_adapters_exist(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    reader = QueueReader(client, limit=64)
    before = command_count(client)
    reader.read({"resident-a", "resident-b"})  # not a tick that reads resident queues
    idle = command_count(client) - before - 1  # INFO itself counts once
    backlog.mark(client, {f"gone-{i}": float(i) for i in range(1000)})  # 1000 adapters that drained
    reader.read(set())  # reads at most 64 of them and drops what it read
    assert backlog.size(client) == 1000 - 64
    assert idle <= 2


def test_bulk_only_backlog_lowers_the_prefetch_to_a_few_chunks_and_interactive_restores_it() -> None:
    from workers.services.planner import prefetch_for

    bulk = [QueueState(adapter="a", depth=40, oldest_age_s=5.0), QueueState(adapter="b", depth=9, oldest_age_s=1.0)]
    mine = {queue_name("a"), queue_name("b")}
    assert prefetch_for(bulk, consuming=mine, initial=48, chunk_jobs=16) == 3  # 3 chunks = 48 jobs
    assert prefetch_for(bulk, consuming=mine, initial=48, chunk_jobs=1) == 48
    assert prefetch_for(bulk, consuming=set(), initial=48, chunk_jobs=16) == 48  # not ours: nothing to size
    mixed = [*bulk, QueueState(adapter="c", depth=2, oldest_age_s=1.0, interactive=1)]
    assert prefetch_for(mixed, consuming=mine | {queue_name("c")}, initial=48, chunk_jobs=16) == 48


def test_prefetch_moves_by_differences_and_keeps_celerys_own_adjustments() -> None:
    from kombu.common import QoS

    from workers.services.planner import PrefetchControl

    applied: list[int] = []
    qos = QoS(lambda prefetch_count: applied.append(prefetch_count), 48)
    control = PrefetchControl()
    assert control.apply(qos, initial=48, want=3) and qos.value == 3 and applied[-1] == 3
    qos.increment_eventually(2)  # Celery holds two ETA tasks
    qos.update()
    assert not control.apply(qos, initial=48, want=3)  # already aimed there: untouched
    assert control.apply(qos, initial=48, want=48) and qos.value == 50 and applied[-1] == 50


def test_a_pulled_message_marks_its_queue_served_for_every_worker(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    for adapter in ("pulled", "waiting"):
        client.lpush(queue_name(adapter), json.dumps({"body": ""}))
    backlog.mark(client, {"pulled": 1.0, "waiting": 1.0})
    reader, other = QueueReader(client, limit=64), QueueReader(client, limit=64)
    reader.pulled("pulled")
    reader.read(set())
    ages = {s.adapter: s.served_ago_s for s in other.read(set())}
    assert ages["pulled"] < 5
    assert ages["waiting"] == float("inf")


def test_the_plan_keeps_the_queues_it_consumes_before_resident_ones() -> None:
    add, cancel = plan(
        [q("resident", 9, age=2), q("chosen", 9, age=1)],
        resident={"resident", "x"},
        consuming={"lora.chosen"},
        config=StickyConfig(slots=1, max_wait_s=10, batch_rows=4),
    )
    assert (add, cancel) == ([], [])
