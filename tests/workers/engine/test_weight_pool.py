"""The weight pool's policy: which adapters the mixed layers keep gathered between forwards."""

from __future__ import annotations

from workers.engine.weight_pool import Pool, choose


def test_the_first_forward_gathers_exactly_its_adapters_and_the_base_model_is_no_adapter() -> None:
    assert choose(Pool(), [3, 0, 1, 3]).adapters == (1, 3)


def test_a_forward_whose_adapters_are_all_held_gathers_nothing() -> None:
    pool = choose(Pool(), [1, 2, 3])
    assert choose(pool, [1, 2, 3]) == pool
    assert choose(pool, [0, 0]) == pool  # a base-only forward reads no LoRA weights and pays nothing


def test_an_adapter_not_held_gathers_the_forwards_set_again() -> None:
    pool = choose(Pool(), [1, 2, 3])
    assert choose(pool, [1, 4]).adapters == (1, 4)


def test_unused_adapters_stay_held_until_their_reads_add_up_to_gathering_the_whole_pool_again() -> None:
    pool = choose(Pool(), range(1, 9))
    held = 0
    while (pool := choose(pool, range(1, 8))).adapters == tuple(range(1, 9)):
        held += 1
    assert held == 16  # 1 unused adapter read per forward; gathering the 8 again reads and writes 16
    assert pool == Pool(adapters=tuple(range(1, 8)))  # dropped, and the count starts over


def test_a_subset_for_a_few_forwards_then_the_whole_set_again_never_gathers() -> None:
    """Continuous batching's pattern: a join's prefill is a subset of the batch, the decode after it the
    whole batch again (the scheduler passes the step's set for the prefill; this holds even without)."""
    pool = choose(Pool(), [1, 2, 3, 4])
    for _ in range(3):
        pool = choose(pool, [2])
        assert pool.adapters == (1, 2, 3, 4)
        pool = choose(pool, [1, 2, 3, 4])
        assert pool.adapters == (1, 2, 3, 4)
