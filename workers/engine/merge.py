"""The merged fast path: one slot's deltas merged into the base weights, and restored exactly.

While every row of the batch uses one adapter (when, is
:mod:`workers.engine.merge_policy`'s call), its delta is merged into the
base weight of each mergeable layer it touches, and those layers run the
base alone: no side path. Merging follows PEFT: ``W + scale * B A``, and
for DoRA ``g * (W + scale * B A)`` per output row; computed in float32 and
rounded once to the weight's dtype.

Unmerging is exact: a merge first copies each weight it overwrites (on the
same device; the memory plan reserves room for a copy of every mergeable
weight), and unmerging copies it back, so the base is bit-identical after a
merge and an unmerge. Nothing is ever subtracted, which in bf16 would leave
rounding behind.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from workers.engine.layers import SlotLayer


def merge_into(layer: SlotLayer, slot: int) -> None:
    """Add ``slot``'s delta to ``layer``'s base weight ([out, in] view), in place.

    ``B A`` is ``lora_b[slot].T @ lora_a[slot].T`` (scale included), one ``addmm``; a float32 weight
    of a plain LoRA takes it in place, anything else is computed in float32 and rounded once.
    """
    r = layer.filled[slot]
    b_t, a_t = layer.lora_b[slot, :r, :].t(), layer.lora_a[slot, :, :r].t()  # [out, r], [r, in]
    weight = layer.weight_out_in()
    if weight.dtype == torch.float32 and slot not in layer.dora:
        weight.addmm_(b_t, a_t)
        return
    merged = torch.addmm(weight.float(), b_t.float(), a_t.float())
    if slot in layer.dora:
        merged *= layer.dora_g[slot].float().unsqueeze(1)
    weight.copy_(merged)


class Merger:
    """Holds at most one slot merged into the mergeable layers, and the copies that undo it."""

    def __init__(self, layers: Iterable[SlotLayer]) -> None:
        self.layers = [layer for layer in layers if layer.mergeable]
        self.slot = 0  # merged now; 0: none
        self._copies: dict[int, torch.Tensor] = {}  # layer index -> its weight before the merge

    def copy_bytes(self) -> int:
        """The most a merge copies (every mergeable weight): what the memory plan reserves."""
        return sum(layer.weight.numel() * layer.weight.element_size() for layer in self.layers)

    def pristine(self, layer: SlotLayer) -> torch.Tensor:
        """``layer``'s base weight as [out, in], as it is when nothing is merged."""
        if layer.merged:
            return layer.weight_out_in(self._copies[self.layers.index(layer)])
        return layer.weight_out_in()

    @torch.inference_mode()
    def merge(self, slot: int) -> None:
        """Merge ``slot`` into every mergeable layer it has weights in; all or nothing."""
        if self.slot:
            raise RuntimeError(f"slot {self.slot} is merged; unmerge it first")
        try:
            for i, layer in enumerate(self.layers):
                if slot in layer.filled:
                    self._copies[i] = layer.weight.detach().clone()
                    layer.merged = True
                    merge_into(layer, slot)
        except BaseException:
            self.unmerge()
            raise
        self.slot = slot

    @torch.inference_mode()
    def unmerge(self) -> None:
        """Copy every merged weight back from its copy: the base, bit for bit."""
        for i, copy in self._copies.items():
            self.layers[i].weight.copy_(copy)
            self.layers[i].merged = False
        self._copies.clear()
        self.slot = 0
