"""LoRA on the input embedding, per row: PEFT's ``lora_embedding_A``/``lora_embedding_B`` in mixed batches.

An embedding's LoRA is a lookup, not a matmul: row ``i`` of slot ``s`` with
token ids ``t`` gets ``lora_a[s][t] @ lora_b[s]``, where ``lora_a[s]`` is
``lora_embedding_A`` transposed ([vocab, r]) and ``lora_b[s]`` is
``lora_embedding_B`` transposed and scaled ([r, dim]). The lookup reads one
row of ``A`` per token, so it runs per row (a gather on ``slot * vocab + t``
and one ``bmm``), with no grouping: it costs a few index ops per step
against the decoder's matmuls.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.layers import LoRABatch, RowMap, SlotLayer


class MixedEmbedding(SlotLayer):
    """An ``nn.Embedding`` [vocab, dim] with every slot's LoRA; ``in`` is the vocabulary, ``out`` the dim."""

    def __init__(self, base: nn.Embedding, *, slots: int, r_max: int, batch: LoRABatch) -> None:
        vocab, dim = base.weight.shape
        super().__init__(base, in_f=int(vocab), out_f=int(dim), transposed=True, slots=slots, r_max=r_max, batch=batch)

    def vectors(self, x: torch.Tensor) -> int:
        return x.numel()  # token ids, one per vector

    def delta(self, x: torch.Tensor, m: RowMap) -> torch.Tensor:
        """``x``: token ids [rows, steps] -> [rows, steps, dim]."""
        rank = self.batch.rank
        assert m.row_slots is not None
        ids = x.reshape(m.rows, -1)
        flat = (m.row_slots.unsqueeze(1) * self.in_features + ids).reshape(-1)
        after_a = self.lora_a.view(-1, self.r_max).index_select(0, flat)[:, :rank]  # [rows * steps, r]
        # Each vector's r values placed in its slot's columns (zeros elsewhere), then one matmul against
        # every slot's B: a B gathered per row would copy [rows, r, dim], per token in a packed step.
        slots = self.lora_b.shape[0]
        spread = after_a.new_zeros(after_a.shape[0], slots, rank)
        vectors = torch.arange(after_a.shape[0], device=after_a.device)
        spread[vectors, m.row_slots.repeat_interleave(ids.shape[1])] = after_a
        b = self.lora_b[:, :rank, :].reshape(slots * rank, -1)  # [slots * r, dim]
        d = (spread.view(-1, slots * rank) @ b).view(m.rows, ids.shape[1], -1)
        scale: torch.Tensor | None = getattr(self.base, "embed_scale", None)  # Gemma-style scaled embeddings
        return d if scale is None else d * scale.to(d.dtype)
