"""Mixed-LoRA layers: one forward serves rows of different adapters.

Every target linear module of the base model (``nn.Linear``, or GPT-2's
``Conv1D``) is wrapped once at start-up by :class:`MixedLoRA`, which holds
the stacked weights of every adapter slot::

    A[slots, in, r_max]    (lora_A, transposed so a gather is ready for bmm)
    B[slots, r_max, out]   (lora_B transposed, pre-multiplied by the scale)

Slot 0 is "no adapter" and stays zero. Smaller ranks are zero-padded to
``r_max``, so adapters of any rank, alpha, rsLoRA, target subset or
``layers_to_transform`` coexist (a module an adapter does not touch is zero
in its slot).

A forward adds, for each row ``i`` of slot ``s_i``, ``x_i A[s_i] B[s_i]``
with two batched matmuls per module (``bmm`` then ``baddbmm`` into the base
output). The per-row gathered weights ``A[s]``/``B[s]`` depend only on the
batch's row -> slot map, which changes only when rows join or leave, so
they are gathered once per composition and reused by every decode step in
between; that keeps the extra work per step to two kernels per module
instead of six, which is what makes a mixed batch cost about the base
model's time (vLLM's punica kernels get the same effect on GPU by
segmenting rows by adapter inside one kernel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

_IN_BLOCK = re.compile(r"(^|\.)\d+\.")  # a numbered decoder block: model.layers.3.…, transformer.h.3.…


@dataclass
class LoRABatch:
    """The row -> slot map of the forward about to run, shared by every wrapped layer.

    ``version`` changes whenever the map or any slot's weights change; layers
    re-gather their per-row weights when it differs from what they cached.
    """

    slots: torch.Tensor | None = None  # [rows] long, on the model's device
    version: int = 0
    active: frozenset[int] = field(default_factory=frozenset)  # slots != 0 present in the batch
    rank: int = 0  # the widest rank among loaded slots: columns beyond it are zero and skipped

    def set(self, slots: list[int], device: torch.device, *, rank: int) -> None:
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        self.active = frozenset(s for s in slots if s != 0)
        self.rank = rank
        self.version += 1

    def touch(self) -> None:
        """A slot's weights changed: every cached gather is stale."""
        self.version += 1


class MixedLoRA(nn.Module):
    """A base linear module plus the LoRA deltas of every slot, applied per row."""

    def __init__(self, base: nn.Module, *, slots: int, r_max: int, batch: LoRABatch) -> None:
        super().__init__()
        if isinstance(base, Conv1D):
            in_f, out_f = base.weight.shape
        elif isinstance(base, nn.Linear):
            out_f, in_f = base.weight.shape
        else:
            raise TypeError(f"cannot wrap {type(base).__name__}: only nn.Linear and Conv1D")
        self.base = base
        self.in_features, self.out_features = int(in_f), int(out_f)
        self.batch = batch
        weight = base.weight
        self.register_buffer("lora_a", torch.zeros(slots, in_f, r_max, dtype=weight.dtype, device=weight.device))
        self.register_buffer("lora_b", torch.zeros(slots, r_max, out_f, dtype=weight.dtype, device=weight.device))
        self.filled: set[int] = set()  # slots with weights in this module
        self._version = -1
        self._a: torch.Tensor | None = None  # [rows, in, r] for the cached composition
        self._b: torch.Tensor | None = None  # [rows, r, out]

    def load_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> None:
        """Put one adapter's ``lora_A`` [r, in] / ``lora_B`` [out, r] in ``slot``; ``None`` clears it."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if a is None or b is None:
            self.filled.discard(slot)
            return
        r = a.shape[0]
        self.lora_a[slot, :, :r].copy_(a.t())
        self.lora_b[slot, :r, :].copy_(b.t() * scale)
        self.filled.add(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        batch = self.batch
        if batch.slots is None or not (batch.active & self.filled):
            return y  # no row of this batch has weights in this module
        if self._version != batch.version:
            self._a = self.lora_a[:, :, : batch.rank].index_select(0, batch.slots)
            self._b = self.lora_b[:, : batch.rank, :].index_select(0, batch.slots)
            self._version = batch.version
        assert self._a is not None and self._b is not None
        rows = batch.slots.shape[0]
        x3 = x.reshape(rows, -1, self.in_features)
        y3 = y.reshape(rows, -1, self.out_features)
        return torch.baddbmm(y3, torch.bmm(x3, self._a), self._b).reshape(y.shape)


def target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear module inside the decoder blocks, by its qualified name.

    Embeddings and the LM head are left alone: an adapter that targets them
    is refused when it is loaded.
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and _IN_BLOCK.search(name)
    }


def wrap(model: nn.Module, *, slots: int, r_max: int) -> tuple[LoRABatch, dict[str, MixedLoRA]]:
    """Replace every target module by a :class:`MixedLoRA` around it, in place."""
    batch = LoRABatch()
    wrapped: dict[str, MixedLoRA] = {}
    for name, module in target_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MixedLoRA(module, slots=slots, r_max=r_max, batch=batch)
        setattr(parent, child, layer)
        wrapped[name] = layer
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no linear modules in decoder blocks to serve LoRA on")
    return batch, wrapped
