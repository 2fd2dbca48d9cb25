"""The slot and host-cache eviction policies, as plain functions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.engine.slots import Slot, choose_slot, host_evictions


def test_a_free_slot_is_used_before_anything_is_evicted() -> None:
    slots = [Slot("a", 1.0), Slot(None, 0.0), Slot("b", 0.5)]
    assert choose_slot(slots, pinned=set()) == 2


def test_the_least_recently_used_unpinned_slot_is_evicted() -> None:
    slots = [Slot("a", 3.0), Slot("b", 1.0), Slot("c", 2.0)]
    assert choose_slot(slots, pinned=set()) == 2
    assert choose_slot(slots, pinned={"b"}) == 3
    assert choose_slot(slots, pinned={"a", "b", "c"}) is None


def test_an_adapter_waiting_rows_want_is_evicted_last() -> None:
    slots = [Slot("wanted-old", 1.0), Slot("idle-new", 5.0), Slot("running", 0.5)]
    assert choose_slot(slots, pinned={"running"}, wanted={"wanted-old"}) == 2
    assert choose_slot(slots, pinned={"running", "idle-new"}, wanted={"wanted-old"}) == 1


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 100)), min_size=1, max_size=8, unique_by=lambda t: t[0]
    ),
    st.sets(st.sampled_from("abcdefgh")),
)
def test_a_slot_a_running_row_uses_is_never_chosen(entries: list[tuple[str, float]], pinned: set[str]) -> None:
    slots = [Slot(key, used) for key, used in entries]
    chosen = choose_slot(slots, pinned=pinned)
    if chosen is None:
        assert all(s.key in pinned for s in slots)
    else:
        assert slots[chosen - 1].key not in pinned
        unpinned = [s.last_used for s in slots if s.key not in pinned]
        assert slots[chosen - 1].last_used == min(unpinned)


def test_host_cache_drops_oldest_first_until_within_budget_keeping_what_slots_hold() -> None:
    sizes = [("old", 40), ("in-slot", 40), ("mid", 40), ("new", 40)]
    assert host_evictions(sizes, budget=100, keep={"in-slot"}) == ["old", "mid"]
    assert host_evictions(sizes, budget=1000, keep=set()) == []
    assert host_evictions(sizes, budget=0, keep={"old", "in-slot", "mid", "new"}) == []
