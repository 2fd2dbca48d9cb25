"""LoRA on the input embedding, per row: PEFT's ``lora_embedding_A``/``lora_embedding_B`` in mixed batches.

An embedding's LoRA is a lookup, not a matmul: row ``i`` of slot ``s`` with
token ids ``t`` gets ``lora_a[s][t] @ lora_b[s]``, where ``lora_a[s]`` is
``lora_embedding_A`` transposed ([vocab, r]) and ``lora_b[s]`` is
``lora_embedding_B`` transposed and scaled ([r, dim]). The lookup reads one
row of ``A`` per token, so it runs per token: a gather on ``slot * vocab + t``,
then each token's ``r`` values placed in its adapter's columns of a
``[tokens, (1 + pool) * r]`` matrix (zeros elsewhere; the first ``r`` columns
are the base rows') and one matmul against the pool's ``B`` stacked, gathered
when the pool changes (as :class:`~workers.engine.layers.MixedLoRA` gathers
its weights). What a forward reads grows with the adapters the layers hold,
not with the slots configured, nor with its tokens (a ``B`` gathered per row
would copy ``[tokens, r, dim]`` in a packed step).
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
        self._b: torch.Tensor | None = None  # [(1 + pool) * r, dim]: zeros (base rows), then the pool's B

    def refresh(self) -> None:
        super().refresh()
        batch = self.batch
        if self._skip:
            self._b = None
            return
        index = torch.tensor((0, *batch.adapters), dtype=torch.long, device=self.lora_b.device)  # slot 0 is zero
        self._b = self.lora_b[:, : batch.rank, :].index_select(0, index).reshape(-1, self.out_features)

    def vectors(self, x: torch.Tensor) -> int:
        return x.numel()  # token ids, one per vector

    def delta(self, x: torch.Tensor, m: RowMap) -> torch.Tensor:
        """``x``: token ids [rows, steps] -> [rows, steps, dim]."""
        rank, b = self.batch.rank, self._b
        assert m.row_slots is not None and m.row_pool is not None and b is not None
        ids = x.reshape(m.rows, -1)
        flat = (m.row_slots.unsqueeze(1) * self.in_features + ids).reshape(-1)
        after_a = self.lora_a.view(-1, self.r_max).index_select(0, flat)[:, :rank]  # [rows * steps, r]
        places = b.shape[0] // max(rank, 1)  # 1 + the pool's adapters
        spread = after_a.new_zeros(after_a.shape[0], places, rank)
        vectors = torch.arange(after_a.shape[0], device=after_a.device)
        spread[vectors, m.row_pool.repeat_interleave(ids.shape[1])] = after_a
        d = (spread.view(-1, places * rank) @ b).view(m.rows, ids.shape[1], -1)
        scale: torch.Tensor | None = getattr(self.base, "embed_scale", None)  # Gemma-style scaled embeddings
        return d if scale is None else d * scale.to(d.dtype)
