"""The memory budget arithmetic and the admission rule."""

from __future__ import annotations

import pytest

from workers.engine.memory import BudgetTooSmall, fits, kv_bytes_per_token, plan

MIB = 2**20


def test_kv_cost_counts_keys_and_values_of_every_layer() -> None:
    # Qwen2-0.5B shape: 24 layers, 2 KV heads of 64, bf16.
    assert kv_bytes_per_token(layers=24, kv_heads=2, head_dim=64, dtype_bytes=2) == 12288


def test_the_budget_is_split_into_fixed_costs_activations_and_kv_tokens() -> None:
    b = plan(budget=1000 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=MIB // 8, min_tokens=16)
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
        min_tokens=16,
        quantized="int8",
        full_weights=400 * MIB,
    )
    assert b.kv_tokens == (450 * MIB) // (MIB // 8)  # 1000 - 100 - 100 - 300, less 10 % for activations
    assert "weights 100.0 (int8; 400.0 unquantized, saves 300.0)" in b.describe()
    assert "merge copy 300.0" in b.describe()


def test_a_budget_without_room_for_one_full_row_says_how_much_is_needed() -> None:
    with pytest.raises(BudgetTooSmall, match="at least") as info:
        plan(budget=500 * MIB, weights=400 * MIB, slots=100 * MIB, kv_per_token=1024, min_tokens=2048)
    assert "LORAQ_MEMORY_BUDGET_MB" in str(info.value)


def test_admission_counts_the_padded_cache_rows_times_the_longest() -> None:
    assert fits(running_needs=[], need=100, kv_tokens=100)
    assert fits(running_needs=[50, 50], need=50, kv_tokens=150)
    assert not fits(running_needs=[10, 10], need=60, kv_tokens=150)  # 3 rows x 60
