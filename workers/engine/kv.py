"""The running batch's KV cache: one slot per row, preallocated once, written in place.

Every decoder layer holds keys and values ``[slots, kv_heads, row_tokens,
head_dim]``, allocated when the engine starts (the memory plan's
:attr:`~workers.engine.memory.MemoryBudget.kv_rows` slots of ``row_tokens``)
and never reallocated. The running rows hold slots ``0..n-1`` in the
scheduler's row order (:mod:`workers.engine.kv_slots`); a row's token at
position ``p`` sits in column ``p`` of its slot, so positions, sliding windows
and the mask all read the column index.

- A prefill runs in a throwaway :class:`~transformers.DynamicCache` (the
  prompts left-padded, as before); :meth:`KVBatch.add` then writes each
  joining row's prompt into its slot, once.
- A decode step writes each row's one new key and value at its own column
  (a scatter per layer) and attends over ``keys[:n, :, :longest + 1]``, a view
  of the slots, with a mask that hides each row's columns past its length.
- A row leaving moves at most one other row into its slot
  (:meth:`KVBatch.keep`), so the running rows stay packed in the first slots.

Columns past a row's length are zero (as the left padding was), so a masked
column never carries a stale NaN or infinity into the attention's sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import torch
from transformers import Cache, DynamicCache, PretrainedConfig
from transformers.cache_utils import CacheLayerMixin

from workers.engine.kv_slots import compact

AttentionMask = torch.Tensor | dict[str, torch.Tensor]  # one mask, or one per layer type (mixed sliding windows)


class KVCacheFull(RuntimeError):
    """More rows, or a longer row, than the slots the memory plan allocated (the scheduler admits neither)."""


@dataclass(frozen=True)
class KVDims:
    """The model's KV shape per token: what a slot's column holds in each layer."""

    layers: int
    kv_heads: int
    head_dim: int


def kv_dims(model_config: PretrainedConfig) -> KVDims:
    """From the model's (text) config, as its attention layers shape their keys and values."""
    cfg = model_config.get_text_config()
    heads = int(cfg.num_attention_heads)
    return KVDims(
        layers=int(cfg.num_hidden_layers),
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
    )


class _PrefilledLayer(Protocol):
    keys: torch.Tensor  # [rows, kv_heads, width, head_dim]
    values: torch.Tensor


@dataclass
class _Step:
    """The decode step in progress, shared by every layer: rows, attended length, where each row writes."""

    rows: int = 0
    length: int = 0  # columns attended: the longest row's, including this step's token
    targets: torch.Tensor | None = None  # [rows * kv_heads]: (slot, head, column) of each new vector, flattened


class _SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__ is untyped
    """One decoder layer's slots; :meth:`update` is a decode step's in-place write and its view."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, step: _Step) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # transformers' is untyped
        self.keys: torch.Tensor = keys  # [slots, kv_heads, row_tokens, head_dim]
        self.values: torch.Tensor = values
        self._flat = (keys.view(-1, keys.shape[3]), values.view(-1, values.shape[3]))  # [slots * heads * tokens, dim]
        self.device = keys.device
        self.is_initialized = True
        self._step = step

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Never needed: the slots are allocated with the layer."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each running row's new key and value ``[rows, kv_heads, 1, head_dim]`` at its column
        (one row copy per head, through the flat view); return the running rows' keys and values up to
        the step's length (views, no copy)."""
        step = self._step
        if step.targets is None or key_states.shape[0] != step.rows or key_states.shape[2] != 1:
            raise RuntimeError("the slot cache takes one token per running row, after KVBatch.decode_inputs")
        keys, values = self._flat
        keys.index_copy_(0, step.targets, key_states.reshape(-1, keys.shape[1]))
        values.index_copy_(0, step.targets, value_states.reshape(-1, values.shape[1]))
        return self.keys[: step.rows, :, : step.length], self.values[: step.rows, :, : step.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._step.length, 0

    def get_seq_length(self) -> int:
        return max(self._step.length - 1, 0)

    def get_max_length(self) -> int:
        return int(self.keys.shape[2])


class SlotCache(Cache):
    """The transformers :class:`~transformers.Cache` a decode forward writes into: the slots of every layer."""

    def __init__(self, layers: list[_SlotLayer]) -> None:
        super().__init__(layers=[*layers])


class _Masks:
    """Builds a decode step's attention mask as the model's attention wants it.

    The model gets a finished 4D mask (``[rows, 1, 1, length]``), which
    transformers passes through untouched: its own masks assume every row's
    query sits at the same column, and here each row's sits at its length.
    Sliding-window layers see only their window; a model mixing both kinds
    gets one mask per layer type.
    """

    def __init__(self, model_config: PretrainedConfig, *, dtype: torch.dtype) -> None:
        cfg = model_config.get_text_config()
        self.dtype = dtype
        self.implementation = str(getattr(cfg, "_attn_implementation", None) or "sdpa")
        if self.implementation not in ("sdpa", "eager"):
            raise ValueError(f"the KV cache builds masks for sdpa and eager attention, not {self.implementation}")
        types = set(getattr(cfg, "layer_types", None) or [])
        if types - {"full_attention", "sliding_attention"}:
            raise ValueError(f"the KV cache serves full and sliding-window attention layers, not {sorted(types)}")
        window = getattr(cfg, "sliding_window", None)
        sliding = "sliding_attention" in types or (not types and window is not None)
        self.window: int | None = int(window) if sliding and window is not None else None
        self.mixed = types == {"full_attention", "sliding_attention"}

    def build(self, columns: torch.Tensor, length: int) -> AttentionMask:
        """``columns`` [rows]: each row's query column (its position); keys ``0..length-1``."""
        keys = torch.arange(length, device=columns.device)
        visible = keys[None, :] <= columns[:, None]  # [rows, length]
        if self.window is None:
            return self._shaped(visible)
        windowed = visible & (keys[None, :] > columns[:, None] - self.window)
        if self.mixed:
            return {"full_attention": self._shaped(visible), "sliding_attention": self._shaped(windowed)}
        return self._shaped(windowed)

    def _shaped(self, visible: torch.Tensor) -> torch.Tensor:
        mask = visible[:, None, None, :]
        if self.implementation == "sdpa":
            return mask
        additive = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device)
        return additive.masked_fill_(~mask, torch.finfo(self.dtype).min)  # eager adds the mask to its scores


class KVBatch:
    """The running rows' KV cache: ``slots`` rows of ``row_tokens`` each, allocated here, once.

    ``lengths[i]`` is how many tokens the row in slot ``i`` has cached; the
    rows in slots ``0..n-1`` are the running rows, in the scheduler's order.
    """

    def __init__(
        self,
        model_config: PretrainedConfig,
        *,
        slots: int,
        row_tokens: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        dims = kv_dims(model_config)
        self.slots, self.row_tokens, self.device = slots, row_tokens, device
        self._heads = torch.arange(dims.kv_heads, device=device)[None, :]  # [1, kv_heads]
        self.lengths: list[int] = []
        self._written = [0] * slots  # columns of each slot that may be nonzero
        self._step = _Step()
        self._masks = _Masks(model_config, dtype=dtype)
        shape = (slots, dims.kv_heads, row_tokens, dims.head_dim)
        self.cache = SlotCache(
            [
                _SlotLayer(
                    torch.zeros(shape, dtype=dtype, device=device),
                    torch.zeros(shape, dtype=dtype, device=device),
                    self._step,
                )
                for _ in range(dims.layers)
            ]
        )

    @property
    def layers(self) -> list[_SlotLayer]:
        return cast("list[_SlotLayer]", self.cache.layers)

    @property
    def nbytes(self) -> int:
        """What the slots hold in memory: the allocation, whatever the rows use of it."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values))

    def add(self, prefilled: DynamicCache, lengths: list[int]) -> None:
        """Rows joining after their prefill: ``prefilled`` holds their prompts left-padded to one width,
        ``lengths`` each prompt's tokens. They take the next slots, each prompt from column 0."""
        start, count = len(self.lengths), len(lengths)
        if start + count > self.slots or max(lengths) > self.row_tokens:
            raise KVCacheFull(
                f"{start} + {count} rows (longest prompt {max(lengths)}) in {self.slots} KV slots "
                f"of {self.row_tokens} tokens"
            )
        self._sync_written()
        width = max(lengths)
        span = max(width, *self._written[start : start + count])  # also zero what earlier rows left there
        lens = torch.tensor(lengths, device=self.device)[:, None]
        columns = torch.arange(span, device=self.device)[None, :]
        source = (columns + (width - lens)).clamp(max=width - 1)  # [count, span]: left padding skipped
        keep = (columns < lens)[:, None, :, None]
        for into, layer in zip(self.layers, cast("list[_PrefilledLayer]", prefilled.layers), strict=True):
            for dst, src in ((into.keys, layer.keys), (into.values, layer.values)):
                index = source[:, None, :, None].expand(count, src.shape[1], span, src.shape[3])
                dst[start : start + count, :, :span] = src.gather(2, index).where(keep, 0)
        self._written[start : start + count] = lengths
        self.lengths += lengths

    def keep(self, rows: list[int]) -> list[int]:
        """Keep the rows in slots ``rows`` (ascending); return their new order (old slots, by new slot).

        The kept rows stay packed in the first slots: each slot a leaving row
        frees below the new count takes one row from above it (one row's
        copy per leaving row, at most).
        """
        plan = compact(rows, rows=len(self.lengths))
        self._sync_written()
        for src, dst in plan.moves:
            span = max(self.lengths[src], self._written[dst])  # the mover's zeros clear what dst held
            for layer in self.layers:
                layer.keys[dst, :, :span] = layer.keys[src, :, :span]
                layer.values[dst, :, :span] = layer.values[src, :, :span]
            self._written[dst] = self.lengths[src]
        self.lengths = [self.lengths[i] for i in plan.order]
        return plan.order

    def decode_inputs(self) -> tuple[torch.Tensor, AttentionMask]:
        """Position ids ``[rows, 1]`` and attention mask for the decode step about to run; the step's
        forward writes each row's token at its own column (its position), so each row's length grows by one."""
        if not self.lengths:
            raise RuntimeError("no running rows to decode")
        if max(self.lengths) >= self.row_tokens:
            raise KVCacheFull(f"a row outgrew its KV slot of {self.row_tokens} tokens")
        columns = torch.tensor(self.lengths, device=self.device)
        step = self._step
        step.rows, step.length = len(self.lengths), max(self.lengths) + 1
        slots = torch.arange(step.rows, device=self.device)[:, None]
        step.targets = (((slots * self._heads.shape[1] + self._heads) * self.row_tokens) + columns[:, None]).view(-1)
        self.lengths = [n + 1 for n in self.lengths]
        return columns[:, None], self._masks.build(columns, step.length)

    def clear(self) -> None:
        """Drop every row (after a failed step); the slots stay allocated."""
        self._sync_written()
        self.lengths = []
        self._step.targets = None

    def _sync_written(self) -> None:
        for slot, length in enumerate(self.lengths):
            self._written[slot] = max(self._written[slot], length)
