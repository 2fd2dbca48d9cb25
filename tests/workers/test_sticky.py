"""The adapter-sticky policy: stickiness, switching, priorities and the starvation bound."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.contract.broker import QueueState
from workers.sticky import StickyConfig, choose_queues
from workers.sticky_sim import Arrival, WorkerModel, simulate

CONFIG = StickyConfig(slots=2, max_wait_s=10.0, batch_rows=8, min_swap_depth=3)


def q(adapter: str, depth: int, age: float = 1.0, interactive: int = 0) -> QueueState:
    return QueueState(adapter=adapter, depth=depth, oldest_age_s=age if depth else 0.0, interactive=interactive)


def test_stays_on_resident_adapters_while_they_have_backlog() -> None:
    chosen = choose_queues(
        [q("hot", 50, age=2), q("a", 40, age=1), q("b", 30, age=1)], resident={"a", "b"}, config=CONFIG
    )
    assert chosen == ["a", "b"]


def test_switches_to_the_deepest_queue_when_the_resident_one_drains() -> None:
    chosen = choose_queues([q("a", 0), q("deep", 20), q("shallow", 5)], resident={"a", "x"}, config=CONFIG)
    assert chosen == ["deep"]  # equally old: the deeper first, and it fills a batch


def test_an_overdue_queue_is_served_before_resident_ones() -> None:
    chosen = choose_queues([q("a", 40), q("b", 40), q("late", 1, age=11)], resident={"a", "b"}, config=CONFIG)
    assert chosen[0] == "late" and len(chosen) == 2


def test_interactive_backlog_becomes_overdue_sooner() -> None:
    queues = [q("a", 40), q("b", 40), q("chat", 1, age=3, interactive=1), q("bulk", 1, age=9)]
    assert choose_queues(queues, resident={"a", "b"}, config=CONFIG)[0] == "chat"


def test_swaps_only_when_they_pay() -> None:
    """A fresh shallow queue is not worth evicting an adapter; a free slot, depth or a job that waited is."""
    fresh = [q("a", 1), q("shallow", 2, age=0.05)]
    assert choose_queues(fresh, resident={"a", "x"}, config=CONFIG) == ["a"]
    assert choose_queues(fresh, resident={"a"}, config=CONFIG) == ["a", "shallow"]  # a free slot: no eviction
    assert choose_queues([q("a", 1), q("deep", 3, age=0.05)], resident={"a", "x"}, config=CONFIG) == ["a", "deep"]
    waited = [q("a", 1), q("shallow", 2, age=CONFIG.swap_after_s)]
    assert choose_queues(waited, resident={"a", "x"}, config=CONFIG) == ["a", "shallow"]


def test_no_swap_while_resident_queues_fill_the_batch() -> None:
    queues = [q("a", 8), q("tail", 1, age=5.0)]
    assert choose_queues(queues, resident={"a", "x"}, config=CONFIG) == ["a"]


def test_tail_queues_join_a_mixed_batch_while_there_are_spare_places() -> None:
    wide = StickyConfig(slots=4, max_wait_s=10.0, batch_rows=8)
    queues = [q("hot", 2), q("t1", 1, age=0.5), q("t2", 1, age=0.4), q("t3", 1, age=0.3)]
    assert choose_queues(queues, resident={"hot", "x", "y", "z"}, config=wide) == ["hot", "t1", "t2", "t3"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 20.0)), min_size=1, max_size=8),
    st.sets(st.integers(0, 7), max_size=2),
)
def test_work_conserving_never_idle_while_a_queue_has_backlog(spec: list[tuple[int, float]], res: set[int]) -> None:
    """Any backlog: something is chosen; a free slot: every queue with backlog may join until a batch is full."""
    queues = [q(f"a{i}", depth, age=age) for i, (depth, age) in enumerate(spec)]
    resident = {f"a{i}" for i in res}
    chosen = choose_queues(queues, resident=resident, config=CONFIG)
    if any(x.depth for x in queues):
        assert chosen
    assert len(chosen) <= CONFIG.slots and all(x.depth for x in queues if x.adapter in chosen)


def test_never_chooses_more_queues_than_slots_or_an_empty_one() -> None:
    queues = [q(f"o{i}", 1, age=100 + i) for i in range(5)] + [q("empty", 0)]
    chosen = choose_queues(queues, resident={"empty"}, config=CONFIG)
    assert chosen == ["o4", "o3"]


MODEL = WorkerModel(slots=3, batch_rows=6, step_s=0.1, swap_s=0.05, max_wait_s=2.0, held_rows=6)
B_MAX = MODEL.longest_batch_s(1)

arrivals_strategy = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=0.5), st.integers(min_value=0, max_value=11)),
    min_size=1,
    max_size=150,
)


@settings(max_examples=60, deadline=None)
@given(arrivals_strategy)
def test_no_job_starves_whatever_arrives_after_it(spec: list[tuple[float, int]]) -> None:
    """Once a job's queue is overdue it is served within one batch per older job still
    waiting (plus the batch running then): later arrivals can never push it back."""
    t, arrivals = 0.0, []
    for gap, adapter in spec:
        t += gap
        arrivals.append(Arrival(t, f"a{adapter}"))
    result = simulate(arrivals, policy="sticky", model=MODEL)
    assert len(result.served) == len(arrivals)
    for j, arrival in enumerate(arrivals):
        overdue_at = arrival.at_s + MODEL.max_wait_s
        older_waiting = sum(1 for i in range(j) if result.served[i] >= overdue_at)
        bound = MODEL.max_wait_s + (older_waiting + 2) * B_MAX
        assert result.served[j] - arrival.at_s <= bound + 1e-9


def test_an_idle_worker_takes_a_shallow_queue_at_once() -> None:
    """Nothing resident has backlog and nothing is overdue: swapping in a one-job queue delays nobody."""
    full = StickyConfig(slots=2, max_wait_s=30)
    assert choose_queues([q("new", 1, age=0.05)], resident={"a", "b"}, config=full) == ["new"]
    assert choose_queues([q("new", 1, age=0.05), q("a", 3)], resident={"a", "b"}, config=full) == ["a"]


def test_a_queue_served_recently_is_not_overdue_however_old_its_oldest_job() -> None:
    """In a burst every job is about as old as the bound: counting from the last service keeps the
    resident queues, instead of making every queue overdue at once and rotating the slots."""
    served = QueueState(adapter="a", depth=400, oldest_age_s=50.0, served_ago_s=0.2)
    starved = QueueState(adapter="b", depth=400, oldest_age_s=50.0, served_ago_s=12.0)
    never = QueueState(adapter="c", depth=400, oldest_age_s=11.0)
    assert choose_queues([served], resident={"a"}, config=CONFIG) == ["a"]
    assert choose_queues([served, starved, never], resident={"a", "x"}, config=CONFIG) == ["b", "c"]


def test_queues_being_consumed_are_kept_before_resident_ones() -> None:
    """A queue just chosen is not resident until its first rows load; dropping it then wastes the swap."""
    queues = [q("old", 40, age=3), q("new", 40, age=1)]
    assert choose_queues(queues, resident={"old", "x"}, config=CONFIG, consuming=["new"])[0] == "new"
    assert choose_queues(queues, resident={"old", "x"}, config=CONFIG)[0] == "old"


def test_a_burst_over_more_adapters_than_slots_loads_each_adapter_a_few_times_and_serves_every_one() -> None:
    """1,200 jobs at once over 6 adapters, 3 slots: FIFO swaps on most batches; sticky loads an adapter
    again only when the bound makes it rotate, and no adapter with waiting jobs goes unserved for
    much longer than the bound."""
    model = WorkerModel(slots=3, batch_rows=6, step_s=0.01, swap_s=0.003, max_wait_s=2.0, held_rows=18)
    arrivals = [Arrival(i * 1e-6, f"a{i % 6}", steps=4) for i in range(1200)]
    sticky = simulate(arrivals, policy="sticky", model=model)
    fifo = simulate(arrivals, policy="fifo", model=model)
    assert sticky.swaps <= 3 * 6 < fifo.swaps / 5  # each adapter loaded a few times, not per batch
    served: dict[str, list[float]] = {}
    for index, at in sorted(sticky.served.items(), key=lambda item: item[1]):
        served.setdefault(arrivals[index].adapter, []).append(at)
    gaps = [b - a for times in served.values() for a, b in itertools.pairwise([0.0, *times])]
    assert max(gaps) <= model.max_wait_s + 2 * model.longest_batch_s(4) + 0.5  # + the engine's swap wait
