"""The memory budget arithmetic and the admission rule."""

from __future__ import annotations

import pytest

from workers.engine.memory import BudgetTooSmall, kv_bytes_per_token, plan

MIB = 2**20


def test_kv_cost_counts_keys_and_values_of_every_layer() -> None:
    # Qwen2-0.5B shape: 24 layers, 2 KV heads of 64, bf16.
    assert kv_bytes_per_token(layers=24, kv_heads=2, head_dim=64, dtype_bytes=2) == 12288


def test_the_budget_is_split_into_fixed_costs_activations_and_kv_tokens() -> None:
    b = plan(budget=1000 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=MIB // 8, row_tokens=16, max_rows=8)
    assert b.activations == 50 * MIB
    assert b.kv_tokens == (450 * MIB) // (MIB // 8)
    assert "KV cache 3600 tokens" in b.describe()


def test_the_merge_copy_is_a_fixed_cost_and_a_quantized_base_prints_its_saving() -> None:
    b = plan(
        budget=1000 * MIB,
        weights=100 * MIB,
        slots=100 * MIB,
        merge_copy=300 * MIB,
        kv_per_token=MIB // 8,
        row_tokens=16,
        max_rows=8,
        quantized="int8",
        full_weights=400 * MIB,
    )
    assert b.kv_tokens == (450 * MIB) // (MIB // 8)  # 1000 - 100 - 100 - 300, less 10 % for activations
    assert "weights 100.0 (int8; 400.0 unquantized, saves 300.0)" in b.describe()
    assert "merge copy 300.0" in b.describe()


def test_a_budget_without_room_for_one_full_row_says_how_much_is_needed() -> None:
    with pytest.raises(BudgetTooSmall, match="at least") as info:
        plan(budget=500 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=1024, row_tokens=2048, max_rows=8)
    assert "LORAQ_MEMORY_BUDGET_MB" in str(info.value)


def test_the_kv_cache_is_max_rows_full_length_slots_or_as_many_as_the_budget_holds() -> None:
    roomy = plan(
        budget=1000 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=MIB // 8, row_tokens=16, max_rows=8
    )
    assert (roomy.kv_rows, roomy.row_tokens) == (8, 16)  # 3600 tokens of room; 8 slots of 16 allocated
    assert "8 row slots x 16 tokens" in roomy.describe()
    tight = plan(
        budget=1000 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=MIB // 8, row_tokens=1000, max_rows=8
    )
    assert (tight.kv_rows, tight.row_tokens) == (3, 1000)  # fewer rows at once, never shorter ones
