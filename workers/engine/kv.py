"""The running batch's KV cache: one tensor per layer, rows left-padded to one length.

Rows join (``add``: their freshly prefilled cache is left-padded to the
batch's length, or the batch's to theirs, and concatenated) and leave
(``keep``: their rows are dropped and the columns that are padding for every
remaining row trimmed) at step boundaries. Each row keeps its own positions
(the engine passes ``position_ids``), so the padding only costs memory, and
the attention mask hides it.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from transformers import DynamicCache


class _LayerKV(Protocol):
    """One decoder layer's cache, as a plain attention layer holds it once prefilled."""

    keys: torch.Tensor  # [rows, kv_heads, length, head_dim]
    values: torch.Tensor  # [rows, kv_heads, length, head_dim]


def _layers(cache: DynamicCache) -> list[_LayerKV]:
    """The cache's layers; only attention layers (the engine's models have no linear-attention ones)."""
    return cast("list[_LayerKV]", cache.layers)


class KVBatch:
    """The running rows' KV cache, left-padded to one length, and its attention mask."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, length], 1 = real token

    def add(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(_layers(self.cache), _layers(cache), strict=True):
            old.keys = torch.cat([_left_pad(old.keys, length, dim=2), _left_pad(new.keys, length, dim=2)])
            old.values = torch.cat([_left_pad(old.values, length, dim=2), _left_pad(new.values, length, dim=2)])
        self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices), then drop the columns that are padding for all of them."""
        if not rows:
            self.cache = self.mask = None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        pad = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())  # leading columns every row pads
        self.mask = mask[:, pad:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, pad:]
            layer.values = layer.values.index_select(0, index)[:, :, pad:]

    def extend(self) -> torch.Tensor:
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.mask


def _left_pad(t: torch.Tensor, length: int, *, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
