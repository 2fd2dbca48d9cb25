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

SLOT_ATTENTION = "loraq_slots"  # the attention implementation of workers.engine.packed_attention
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


@dataclass(frozen=True)
class Packed:
    """A packed step: ``decode`` running rows' one token each, then each joining row's prompt left-padded
    to ``width``, in one sequence ``[1, decode + joining * width]`` (see :meth:`KVBatch.packed_inputs`)."""

    decode: int  # running rows: tokens 0..decode-1, slots 0..decode-1
    joining: int  # rows whose prompts follow, taking the next slots
    width: int  # each joining row's tokens in the sequence, its prompt right-aligned
    real: torch.Tensor  # [tokens written]: where in the sequence each token the cache keeps sits
    decode_mask: AttentionMask  # the running rows' queries over their slots' first ``length`` columns
    prompt_mask: AttentionMask  # [joining, 1, width, width]: causal within each prompt, padding hidden


@dataclass
class _Step:
    """The step in progress, shared by every layer: rows, attended length, where each new vector goes."""

    rows: int = 0  # running rows attending their slots (a decode step's, or a packed step's decode rows)
    length: int = 0  # columns attended: the longest row's, including this step's token
    targets: torch.Tensor | None = None  # (slot, head, column) of each new vector, flattened
    packed: Packed | None = None


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
        if step.packed is not None and step.targets is not None:
            # [1, kv_heads, tokens, dim] in (head, token) order once flattened; padding is not kept
            keys, values = self._flat
            for flat, new in ((keys, key_states), (values, value_states)):
                kept = new[0].index_select(1, step.packed.real)  # [kv_heads, tokens kept, dim]
                flat.index_copy_(0, step.targets, kept.reshape(-1, flat.shape[1]))
            return key_states, value_states  # the packed attention reads the slots and these itself
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
        if self.implementation == SLOT_ATTENTION:  # SDPA, packed steps aside (workers.engine.packed_attention)
            self.implementation = "sdpa"
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
        return self._windowed(keys[None, None, :] <= columns[:, None, None], columns[:, None, None], keys)

    def prompts(self, lengths: torch.Tensor, width: int) -> AttentionMask:
        """Prompts of ``lengths`` right-aligned in ``width`` columns: each query sees its prompt's keys up to
        itself (a padding query sees its own column only, so its softmax stays finite; it is never read)."""
        cols = torch.arange(width, device=lengths.device)
        start = (width - lengths)[:, None, None]  # [rows, 1, 1]: the first column of each prompt
        queries, keys = cols[None, :, None], cols[None, None, :]
        visible = (keys <= queries) & ((keys >= start) | (keys == queries))  # [rows, width, width]
        return self._windowed(visible, queries.expand(len(lengths), width, 1), keys)

    def _windowed(self, visible: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> AttentionMask:
        """``visible`` [rows, queries, keys] causal; sliding-window layers also drop keys past the window."""
        if self.window is None:
            return self._shaped(visible)
        windowed = visible & (keys > queries - self.window)
        if self.mixed:
            return {"full_attention": self._shaped(visible), "sliding_attention": self._shaped(windowed)}
        return self._shaped(windowed)

    def _shaped(self, visible: torch.Tensor) -> torch.Tensor:
        mask = visible[:, None, :, :]
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
    def attended(self) -> int:
        """Columns the running rows attend in the step in progress (their longest, with its new token)."""
        return self._step.length

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
        step.packed = None
        self.lengths = [n + 1 for n in self.lengths]
        return columns[:, None], self._masks.build(columns, step.length)

    def packed_inputs(self, prompts: list[int]) -> tuple[torch.Tensor, Packed]:
        """Position ids ``[1, tokens]`` and the layout of a packed step: the running rows' next tokens, then
        joining rows' prompts of ``prompts`` tokens each, left-padded to the longest. The step's forward
        writes every kept token at its row's column in place (the joining rows take the next slots, each
        prompt from column 0), so the running rows grow by one and the joining rows join with their prompts.
        """
        n, k = len(self.lengths), len(prompts)
        if not n or not k:
            raise RuntimeError("a packed step has running rows and joining rows")
        if n + k > self.slots or max(prompts) > self.row_tokens or max(self.lengths) >= self.row_tokens:
            raise KVCacheFull(
                f"{n} + {k} rows (longest prompt {max(prompts)}) in {self.slots} KV slots of {self.row_tokens} tokens"
            )
        self._sync_written()
        for slot, length in enumerate(prompts, start=n):  # zero what earlier rows left past the prompt
            if self._written[slot] > length:
                for layer in self.layers:
                    layer.keys[slot, :, length : self._written[slot]] = 0
                    layer.values[slot, :, length : self._written[slot]] = 0
        width = max(prompts)
        real = list(range(n))
        slots, columns, positions = list(range(n)), list(self.lengths), list(self.lengths)
        for j, length in enumerate(prompts):
            first = n + j * width + width - length
            real += range(first, first + length)
            slots += [n + j] * length
            columns += range(length)
            positions += [0] * (width - length) + list(range(length))
        heads = self._heads.shape[1]
        slot_t = torch.tensor(slots, device=self.device)
        column_t = torch.tensor(columns, device=self.device)
        head_t = self._heads.view(-1, 1)  # [kv_heads, 1]: targets in (head, token) order
        step = self._step
        step.rows, step.length = n, max(self.lengths) + 1
        step.targets = (((slot_t[None, :] * heads + head_t) * self.row_tokens) + column_t[None, :]).view(-1)
        decoding = torch.tensor(self.lengths, device=self.device)
        step.packed = Packed(
            decode=n,
            joining=k,
            width=width,
            real=torch.tensor(real, device=self.device),
            decode_mask=self._masks.build(decoding, step.length),
            prompt_mask=self._masks.prompts(torch.tensor(prompts, device=self.device), width),
        )
        self._written[n : n + k] = prompts
        self.lengths = [length + 1 for length in self.lengths] + prompts
        return torch.tensor(positions, device=self.device)[None, :], step.packed

    def clear(self) -> None:
        """Drop every row (after a failed step); the slots stay allocated."""
        self._sync_written()
        self.lengths = []
        self._step.targets = None
        self._step.packed = None

    def _sync_written(self) -> None:
        for slot, length in enumerate(self.lengths):
            self._written[slot] = max(self._written[slot], length)
