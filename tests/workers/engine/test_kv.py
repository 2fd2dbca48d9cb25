"""The running batch's KV cache: preallocated slots, prompts written once, rows leaving move one row."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

from workers.engine.kv import KVBatch, KVCacheFull
from workers.engine.kv_slots import compact

CONFIG = LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)  # head_dim 4


def prefilled(lengths: list[int], *, first: float) -> DynamicCache:
    """A prefill's cache: prompts left-padded to the longest; a token's value is ``first`` + its row * 10 + its
    position, padding is -1 (it must never reach a slot)."""
    width = max(lengths)
    cache = DynamicCache()
    for layer in range(2):
        kv = torch.full((len(lengths), 2, width, 4), -1.0)
        for row, n in enumerate(lengths):
            kv[row, :, width - n :] = (first + 10 * row + torch.arange(n, dtype=torch.float))[:, None]
        cache.update(kv, kv + 0.5, layer_idx=layer)
    return cache


def batch(slots: int = 3, row_tokens: int = 8, config: PretrainedConfig = CONFIG) -> KVBatch:
    return KVBatch(config, slots=slots, row_tokens=row_tokens, dtype=torch.float32, device=torch.device("cpu"))


def test_joining_prompts_are_written_from_column_zero_of_their_slots_with_zeros_past_their_length() -> None:
    kv = batch()
    kv.add(prefilled([3, 5], first=100.0), [3, 5])
    keys = kv.layers[1].keys
    assert keys[0, 0, :, 0].tolist() == [100, 101, 102, 0, 0, 0, 0, 0]
    assert keys[1, 1, :, 3].tolist() == [110, 111, 112, 113, 114, 0, 0, 0]
    assert kv.layers[0].values[0, 0, :3, 0].tolist() == [100.5, 101.5, 102.5]
    assert kv.lengths == [3, 5]


def test_a_decode_step_writes_each_row_at_its_own_position_and_attends_up_to_the_longest() -> None:
    kv = batch()
    kv.add(prefilled([3, 5], first=100.0), [3, 5])
    positions, mask = kv.decode_inputs()
    assert positions.tolist() == [[3], [5]]
    assert isinstance(mask, torch.Tensor) and mask.shape == (2, 1, 1, 6)
    assert mask[:, 0, 0].tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    new = torch.tensor([7.0, 9.0]).view(2, 1, 1, 1).expand(2, 2, 1, 4)
    keys, _ = kv.cache.update(new, new, 0)
    assert keys.shape == (2, 2, 6, 4)
    assert keys.data_ptr() == kv.layers[0].keys.data_ptr()  # a view of the slots, not a copy
    assert keys[:, 0, :, 0].tolist() == [[100, 101, 102, 7, 0, 0], [110, 111, 112, 113, 114, 9]]
    assert kv.lengths == [4, 6]


def test_a_leaving_row_gives_its_slot_to_the_last_row_and_no_tensor_is_reallocated() -> None:
    kv = batch()
    pointers = [t.data_ptr() for layer in kv.layers for t in (layer.keys, layer.values)]
    kv.add(prefilled([6, 2], first=100.0), [6, 2])
    kv.add(prefilled([3], first=300.0), [3])
    assert kv.keep([1, 2]) == [2, 1]  # the row in slot 2 moves into slot 0; slot 1 stays
    assert kv.lengths == [3, 2]
    assert kv.layers[0].keys[0, 0, :, 0].tolist() == [300, 301, 302, 0, 0, 0, 0, 0]  # slot 0's old row: gone
    assert kv.layers[0].keys[1, 0, :, 0].tolist() == [110, 111, 0, 0, 0, 0, 0, 0]
    assert [t.data_ptr() for layer in kv.layers for t in (layer.keys, layer.values)] == pointers
    assert kv.nbytes == 2 * 2 * 3 * 2 * 8 * 4 * 4  # layers x (keys, values) x slots x heads x tokens x dim x fp32


def test_a_new_row_in_a_slot_a_longer_row_left_sees_zeros_past_its_prompt() -> None:
    kv = batch(slots=2)
    kv.add(prefilled([7, 2], first=100.0), [7, 2])
    kv.keep([1])  # the long row leaves; the short one moves into slot 0
    kv.add(prefilled([2], first=500.0), [2])  # slot 1 still holds what its old row wrote
    assert kv.layers[0].keys[1, 0, :, 0].tolist() == [500, 501, 0, 0, 0, 0, 0, 0]


def test_more_rows_than_slots_or_a_prompt_longer_than_a_slot_is_refused() -> None:
    kv = batch(slots=2, row_tokens=4)
    with pytest.raises(KVCacheFull, match="3 rows"):
        kv.add(prefilled([1, 1, 1], first=0.0), [1, 1, 1])
    with pytest.raises(KVCacheFull, match="longest prompt 5"):
        kv.add(prefilled([5], first=0.0), [5])
    kv.add(prefilled([4], first=0.0), [4])
    with pytest.raises(KVCacheFull, match="outgrew its KV slot of 4 tokens"):
        kv.decode_inputs()


def test_sliding_window_layers_see_only_their_window_and_a_mixed_model_gets_a_mask_per_layer_type() -> None:
    mistral = MistralConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    mistral.sliding_window = 2
    kv = batch(config=mistral)
    kv.add(prefilled([4], first=0.0), [4])
    _, mask = kv.decode_inputs()
    assert isinstance(mask, torch.Tensor) and mask[0, 0, 0].tolist() == [False, False, False, True, True]
    qwen = Qwen2Config(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    qwen.sliding_window, qwen.layer_types = 2, ["full_attention", "sliding_attention"]
    kv = batch(config=qwen)
    kv.add(prefilled([4], first=0.0), [4])
    _, masks = kv.decode_inputs()
    assert isinstance(masks, dict)
    assert masks["full_attention"][0, 0, 0].tolist() == [True] * 5
    assert masks["sliding_attention"][0, 0, 0].tolist() == [False, False, False, True, True]


def test_a_packed_step_writes_decode_tokens_at_their_columns_and_prompts_into_new_slots_from_column_zero() -> None:
    kv = batch(slots=4)
    kv.add(prefilled([3, 5, 7], first=100.0), [3, 5, 7])
    kv.keep([0, 1])  # slot 2 keeps what its 7-token row wrote: the packed step must clear it
    positions, packed = kv.packed_inputs([2, 4])
    assert positions.tolist() == [[3, 5, 0, 0, 0, 1, 0, 1, 2, 3]]  # 2 decode tokens, then prompts padded to 4
    assert (packed.decode, packed.joining, packed.width) == (2, 2, 4)
    assert packed.real.tolist() == [0, 1, 4, 5, 6, 7, 8, 9]  # the padding (tokens 2, 3) is never kept
    heads = torch.tensor([900.0, 1900.0]).view(1, 2, 1, 1)  # token t of head h: 900 + 1000 h + t
    new = (torch.arange(10, dtype=torch.float).view(1, 1, 10, 1) + heads).expand(1, 2, 10, 4)
    keys, _ = kv.cache.update(new, new, 0)
    assert keys is new  # the packed attention reads the step's own keys for the prompts
    head0, head1 = kv.layers[0].keys[:, 0, :, 0].tolist(), kv.layers[0].keys[:, 1, :, 0].tolist()
    assert head0[0][:5] == [100, 101, 102, 900, 0] and head1[1][:7] == [110, 111, 112, 113, 114, 1901, 0]
    assert head0[2] == [904, 905, 0, 0, 0, 0, 0, 0] and head1[3] == [1906, 1907, 1908, 1909, 0, 0, 0, 0]
    assert head1[2][:3] == [1904, 1905, 0] and head0[3][:5] == [906, 907, 908, 909, 0]
    assert kv.lengths == [4, 6, 2, 4]
    prompt_mask = packed.prompt_mask
    assert isinstance(prompt_mask, torch.Tensor) and prompt_mask.shape == (2, 1, 4, 4)
    assert prompt_mask[0, 0].tolist() == [  # the 2-token prompt sits in columns 2 and 3
        [True, False, False, False],  # padding sees itself only (finite, never read)
        [False, True, False, False],
        [False, False, True, False],
        [False, False, True, True],
    ]
    decode_mask = packed.decode_mask
    assert isinstance(decode_mask, torch.Tensor) and decode_mask[:, 0, 0].tolist() == [
        [True] * 4 + [False] * 2,
        [True] * 6,
    ]


def test_a_packed_step_needs_running_and_joining_rows_and_room_for_both() -> None:
    kv = batch(slots=2)
    with pytest.raises(RuntimeError, match="running rows and joining rows"):
        kv.packed_inputs([2])
    kv.add(prefilled([3], first=0.0), [3])
    with pytest.raises(KVCacheFull, match="1 \\+ 2 rows"):
        kv.packed_inputs([1, 1])


def test_compaction_moves_one_row_per_hole_lowest_first_and_keeps_the_rest_in_place() -> None:
    assert compact([0, 1, 2], rows=3).moves == []
    plan = compact([0, 3, 5, 6], rows=7)
    assert plan.moves == [(5, 1), (6, 2)]
    assert plan.order == [0, 5, 6, 3]
    assert compact([], rows=4).order == []
    with pytest.raises(ValueError, match="ascending"):
        compact([2, 1], rows=3)
