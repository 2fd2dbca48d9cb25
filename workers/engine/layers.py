"""Mixed-LoRA layers: one forward serves rows of different adapters.

Every target linear module of the base model (``nn.Linear``, or GPT-2's
``Conv1D``) is wrapped once at start-up by :class:`MixedLoRA`, which holds
the stacked weights of every adapter slot::

    lora_a[slots, in, r_max]    (lora_A, transposed so a gather is ready for bmm)
    lora_b[slots, r_max, out]   (lora_B transposed, pre-multiplied by the scale)

Slot 0 is "no adapter" and stays zero. Smaller ranks are zero-padded to
``r_max``, so adapters of any rank, alpha, rsLoRA, target subset or
``layers_to_transform`` coexist (a module an adapter does not touch is zero
in its slot).

A forward adds, for each row ``i`` of slot ``s_i``, ``x_i @ lora_a[s_i] @ lora_b[s_i]``:
rows are grouped by adapter (index ops), each group runs against its
adapter's weights in one ``bmm`` for A and one for B over all groups, and the
results are added back to their rows. No Python loop over rows or adapters.

Why grouped and not per-row gathered weights (``A[s_i]`` for every row):
decode is bandwidth-bound for the LoRA part, and per-row copies read each
adapter's weights once per row using it, while groups read them once per
step. The batch's adapter weights are copied out of the slot stack only
when the *set* of adapters in the batch changes, not when rows join or
leave, which with continuous batching happens every few steps. (vLLM's
punica/SGMV kernels segment rows by adapter inside one GPU kernel; this is
the same idea with stock torch ops so it runs on CPU and any GPU.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

_IN_BLOCK = re.compile(r"(^|\.)\d+\.")  # a numbered decoder block: model.layers.3.…, transformer.h.3.…


@dataclass
class LoRABatch:
    """The row -> slot map of the forward about to run, shared by every wrapped layer.

    Rows are grouped by adapter: ``group_rows`` lists, for each adapter in the
    batch (``adapters``, ascending slot) and each of ``per_group`` places, a row
    of that adapter (places beyond an adapter's row count repeat a row; their
    results are never read). ``row_places`` gives each row its place, and rows
    without an adapter the extra place after the last (a zero delta, present
    when ``has_base``). Layers copy the weights of ``adapters`` only
    when that *set* changes (``weights_version``); rows joining or leaving
    with adapters already present cost a few index ops, not a weight copy.
    """

    adapters: tuple[int, ...] = ()
    rows: int = 0
    per_group: int = 0
    group_rows: torch.Tensor | None = None  # [adapters * per_group]: the row at each grouped place
    row_places: torch.Tensor | None = None  # [rows]: each row's place in the grouped layout
    has_base: bool = False  # some rows have no adapter (their place is the zero one at the end)
    uniform: bool = False  # every row has an adapter and groups are full and in order: pure views
    rank: int = 0  # the widest rank among loaded slots: columns beyond it are zero and skipped
    weights_version: int = 0

    def set(self, slots: list[int], device: torch.device, *, rank: int) -> None:
        """``slots``: each row's slot ([rows], 0 = no adapter); ``rank``: the widest rank in any slot."""
        adapters = tuple(sorted({s for s in slots if s}))
        if adapters != self.adapters or rank != self.rank:
            self.weights_version += 1
        self.adapters, self.rank, self.rows = adapters, rank, len(slots)
        members: dict[int, list[int]] = {a: [] for a in adapters}
        for row, slot in enumerate(slots):
            if slot:
                members[slot].append(row)
        self.per_group = max((len(m) for m in members.values()), default=0)
        group_rows: list[int] = []
        places = [len(adapters) * self.per_group] * len(slots)  # the zero place, for base rows
        for g, adapter in enumerate(adapters):
            rows = members[adapter]
            group_rows += rows + [rows[0]] * (self.per_group - len(rows))
            for i, row in enumerate(rows):
                places[row] = g * self.per_group + i
        self.has_base = 0 in slots
        self.uniform = not self.has_base and places == list(range(len(slots))) and len(group_rows) == len(slots)
        self.group_rows = torch.tensor(group_rows, dtype=torch.long, device=device)
        self.row_places = torch.tensor(places, dtype=torch.long, device=device)

    def touch(self) -> None:
        """A slot's weights changed: every layer re-copies the batch's adapters."""
        self.weights_version += 1


class MixedLoRA(nn.Module):
    """A base linear module plus the LoRA deltas of every slot, applied per adapter group.

    For each row ``i`` of the batch, with ``slot = batch``'s row -> slot map::

        y[i] += scale[slot[i]] * B[slot[i]] @ (A[slot[i]] @ x[i])

    with PEFT's ``A`` [r, in] and ``B`` [out, r]; stored transposed and
    pre-scaled as ``lora_a`` [slots, in, r_max] and ``lora_b`` [slots, r_max, out].
    """

    lora_a: torch.Tensor  # [slots, in, r_max] buffer; slot 0 stays zero
    lora_b: torch.Tensor  # [slots, r_max, out] buffer, scale included

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
        self._a: torch.Tensor | None = None  # [adapters, in, r] of the batch's adapters
        self._b: torch.Tensor | None = None  # [adapters, r, out]
        self._skip = True  # no adapter of the batch touches this module

    def load_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's ``A`` [in, r] and scaled ``B`` [r, out] in ``slot``; ``None`` clears it.

        Writes each element once (a copy, and zeros only beyond the adapter's
        rank): a swap costs a memory copy of the adapter, nothing more.
        """
        if a is None or b is None:
            if slot in self.filled:
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()
                self.filled.discard(slot)
            return
        r = a.shape[1]
        self.lora_a[slot, :, :r].copy_(a)
        self.lora_a[slot, :, r:].zero_()
        self.lora_b[slot, :r, :].copy_(b)
        self.lora_b[slot, r:, :].zero_()
        self.filled.add(slot)

    def _refresh(self) -> None:
        batch = self.batch
        self._version = batch.weights_version
        self._skip = not (set(batch.adapters) & self.filled)
        if self._skip:
            self._a = self._b = None
            return
        index = torch.tensor(batch.adapters, dtype=torch.long, device=self.lora_a.device)
        self._a = self.lora_a[:, :, : batch.rank].index_select(0, index)
        self._b = self.lora_b[:, : batch.rank, :].index_select(0, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [rows, steps, in] (any shape whose leading size is ``batch.rows``) -> [rows, steps, out]."""
        y: torch.Tensor = self.base(x)
        batch = self.batch
        if not batch.adapters:
            return y
        if self._version != batch.weights_version:
            self._refresh()
        if self._skip:
            return y
        assert self._a is not None and self._b is not None
        groups = len(batch.adapters)
        x3 = x.reshape(batch.rows, -1, self.in_features)
        steps = x3.shape[1]
        if batch.uniform:  # rows already sit in adapter order, one full group each: views only
            xg = x3.reshape(groups, -1, self.in_features)
            d = torch.bmm(torch.bmm(xg, self._a), self._b)
            return (y.reshape(groups, -1, self.out_features) + d).reshape(y.shape)
        assert batch.group_rows is not None and batch.row_places is not None
        xg = x3.index_select(0, batch.group_rows).reshape(groups, batch.per_group * steps, self.in_features)
        d = torch.bmm(torch.bmm(xg, self._a), self._b).reshape(groups * batch.per_group, steps, self.out_features)
        if batch.has_base:
            d = torch.cat([d, d.new_zeros(1, steps, self.out_features)])
        return (y.reshape(batch.rows, steps, self.out_features) + d.index_select(0, batch.row_places)).reshape(y.shape)


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
