"""The merged fast path's policy: merge after a wait, unmerge at once, and never flap."""

from __future__ import annotations

from collections.abc import Iterable

from workers.engine.merge_policy import MergePolicy, MergeState, forget, initial, step

POLICY = MergePolicy(wait=4, pays_after=16, max_wait=1024)


def run(forwards: Iterable[list[int]], state: MergeState | None = None) -> tuple[list[int], MergeState]:
    """The merged slot during each forward, and the state after the last."""
    state = state or initial(POLICY)
    merged = []
    for slots in forwards:
        state = step(state, slots, POLICY)
        merged.append(state.merged)
    return merged, state


def switches(merged: list[int]) -> int:
    return sum(1 for before, after in zip([0, *merged], merged, strict=False) if before != after)


def test_one_adapter_alone_is_merged_after_the_wait_and_stays_merged() -> None:
    merged, _ = run([[3, 3, 3]] * 100)
    assert merged[:3] == [0, 0, 0]
    assert merged[3:] == [3] * 97


def test_a_row_of_another_adapter_or_of_the_base_unmerges_at_once() -> None:
    for intruder in ([3, 5], [3, 0], [5]):
        merged, state = run([[3]] * 10 + [intruder])
        assert merged[-2:] == [3, 0], intruder
        assert state.merged == 0


def test_base_rows_alone_and_mixed_batches_are_never_merged() -> None:
    merged, _ = run([[0, 0]] * 50 + [[1, 2]] * 50)
    assert set(merged) == {0}


def test_alternating_traffic_stops_merging_after_a_few_merges_that_did_not_pay() -> None:
    """Ten forwards of one adapter, then one mixed forward, for 10,000 forwards: a naive threshold
    would merge and unmerge 900 times; the backoff stops after the wait passes ten."""
    pattern = [[7]] * 10 + [[7, 8]]
    merged, state = run(pattern * 900)
    assert switches(merged) <= 2 * 3  # waits 4 and 8 merged (and unmerged); 16 > 10 never merges
    assert merged[-1000:] == [0] * 1000
    assert state.wait > 10


def test_adapters_taking_turns_every_forward_never_merge() -> None:
    merged, _ = run([[1], [2]] * 500)
    assert set(merged) == {0}


def test_long_single_adapter_phases_each_merge_and_pay_so_the_wait_comes_back_down() -> None:
    """Phases of 200 forwards of one adapter: merging pays every time, and the wait stays short."""
    phases = [[[adapter]] * 200 for adapter in (1, 2, 1, 2, 1)]
    merged, state = run(forward for phase in phases for forward in phase)
    assert switches(merged) == 2 * 5 - 1  # a merge per phase; each next phase starts with an unmerge
    assert [merged[200 * i + 199] for i in range(5)] == [1, 2, 1, 2, 1]
    assert state.wait == POLICY.wait


def test_the_backoff_is_capped_and_decays_once_merges_pay_again() -> None:
    state = MergeState(wait=POLICY.max_wait)
    merged, state = run([[4]] * (POLICY.max_wait + 100) + [[4, 5]], state)
    assert merged[POLICY.max_wait - 1] == 4  # the longest wait still merges
    assert state.wait == POLICY.max_wait // 2  # that merge paid: the wait halves


def test_forgetting_a_slot_that_holds_a_new_adapter_restarts_its_streak() -> None:
    _, state = run([[2]] * 3)
    assert forget(state, 2).streak == 0
    _, merged_state = run([[2]] * 10)
    assert forget(merged_state, 2).merged == 0
    assert forget(merged_state, 5) == merged_state
