"""The running batch's KV cache: rows join left-padded and leave with the common padding trimmed."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from workers.engine.kv import KVBatch


def cache_of(rows: int, length: int, fill: float) -> tuple[DynamicCache, torch.Tensor]:
    cache = DynamicCache()
    for layer in range(2):
        kv = torch.full((rows, 1, length, 2), fill)
        cache.update(kv, kv.clone(), layer_idx=layer)
    return cache, torch.ones(rows, length, dtype=torch.long)


def test_joining_rows_are_left_padded_to_the_batch_and_leaving_rows_free_their_padding() -> None:
    batch = KVBatch()
    batch.add(*cache_of(1, 3, 1.0))
    batch.add(*cache_of(1, 5, 2.0))  # longer: the first row is padded on the left
    assert batch.mask is not None and batch.cache is not None
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1]
    batch.extend()  # a decode step appends one column for every row
    batch.keep([0])  # the long row leaves: the short one's two padding columns go too
    assert batch.mask.tolist() == [[1, 1, 1, 1]]
    assert batch.cache.layers[1].values.shape == (1, 1, 3, 2)  # the cache gains its column in the forward
    batch.keep([])
    assert batch.cache is None and batch.mask is None
