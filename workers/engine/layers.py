"""Mixed-LoRA layers: one forward serves rows of different adapters.

Every target module of the base model is wrapped once at start-up by a
:class:`SlotLayer` holding the stacked weights of every adapter slot::

    lora_a[slots, in, r_max]    (lora_A, transposed so a gather is ready for bmm)
    lora_b[slots, r_max, out]   (lora_B transposed, pre-multiplied by the scale)
    dora_g[slots, out]          (DoRA's magnitude / column norm; 1 for plain LoRA)

The targets are the linear modules inside the decoder blocks (``nn.Linear``
or GPT-2's ``Conv1D``: :class:`MixedLoRA`), and, unless turned off, the LM
head (a linear module too) and the input embedding
(:class:`~workers.engine.embedding_layer.MixedEmbedding`, where ``in`` is the
vocabulary). Slot 0 is "no adapter" and stays zero. Smaller ranks are
zero-padded to ``r_max``, so adapters of any rank, alpha, rsLoRA, target
subset or ``layers_to_transform`` coexist (a module an adapter does not touch
is zero in its slot).

Each row ``i`` of slot ``s`` gets, with ``d = x_i @ lora_a[s] @ lora_b[s]`` and ``g = dora_g[s]``,
PEFT's output for that adapter alone::

    y_i + d                                  plain LoRA
    y_i + (g - 1) * (y_i - bias) + g * d     DoRA

In a linear layer rows are grouped by adapter (index ops), each group runs
against its adapter's weights in one ``bmm`` for A and one for B over all
groups, and the results are added back to their rows. No Python loop over
rows or adapters.

Why grouped and not per-row gathered weights (``A[s_i]`` for every row):
decode is bandwidth-bound for the LoRA part, and per-row copies read each
adapter's weights once per row using it, while groups read them once per
step. The batch's adapter weights are copied out of the slot stack only
when the *set* of adapters in the batch changes, not when rows join or
leave, which with continuous batching happens every few steps. (vLLM's
punica/SGMV kernels segment rows by adapter inside one GPU kernel; this is
the same idea with stock torch ops so it runs on CPU and any GPU.)

A layer whose ``merged`` flag is set holds one adapter's delta in its base
weight (:mod:`workers.engine.merge`) and runs the base alone: the adapter
manager sets it only while every row of the batch uses that adapter.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class Groups:
    """One contiguous run of a forward's rows (``start:stop``), grouped by adapter for the grouped products.

    ``group_rows`` lists, for each computed group (every adapter of the
    batch's pool, or only those with rows here, ``live``: their positions in
    the pool) and each of ``per_group`` places, a row of that adapter, counted
    from ``start`` (places beyond an adapter's row count, and every place of
    a pool adapter with no row here, repeat a row; their results are never
    read). ``row_places`` gives each row its place, and rows without an
    adapter the extra place after the last (a zero delta, present when
    ``has_base``).
    """

    start: int
    stop: int
    groups: int
    per_group: int
    live: torch.Tensor | None  # [groups]: positions in the pool of the groups computed; None: all of it
    group_rows: torch.Tensor  # [groups * per_group]: the row at each grouped place
    row_places: torch.Tensor  # [rows]: each row's place in the grouped layout
    has_base: bool  # some rows have no adapter (their place is the zero one at the end)
    uniform: bool  # every row has an adapter and groups are full and in order: pure views


@dataclass(frozen=True)
class RowMap:
    """How the rows of one forward group by adapter: one run of :class:`Groups`, or two for a packed
    forward (its decode tokens, then its prompts: a prompt's many tokens would pad every decode group)."""

    rows: int = 0
    row_slots: torch.Tensor | None = None  # [rows]: each row's slot (DoRA scales, embedding gathers)
    row_pool: torch.Tensor | None = None  # [rows]: 0 for a base row, else 1 + its adapter's place in the pool
    parts: tuple[Groups, ...] = ()


def _groups(slots: list[int], adapters: tuple[int, ...], start: int, device: torch.device) -> Groups:
    members: dict[int, list[int]] = {a: [] for a in adapters}
    for row, slot in enumerate(slots):
        if slot:
            members[slot].append(row)
    per_group = max((len(m) for m in members.values()), default=0)
    used = sum(len(m) for m in members.values())
    # Every pool adapter is a group (its gathered weights are views), unless padding the unused ones
    # would more than double the rows computed: then only the live ones, their weights gathered per forward.
    chosen = adapters if len(adapters) * per_group <= 2 * used else tuple(a for a in adapters if members[a])
    group_rows: list[int] = []
    places = [len(chosen) * per_group] * len(slots)  # the zero place, for base rows
    for g, adapter in enumerate(chosen):
        rows = members[adapter] or [0]  # a pool adapter with no row here: its places are padding
        group_rows += [*rows, *[rows[0]] * per_group][:per_group]
        for i, row in enumerate(members[adapter]):
            places[row] = g * per_group + i
    has_base = 0 in slots
    live = None if chosen == adapters else [adapters.index(a) for a in chosen]
    return Groups(
        start=start,
        stop=start + len(slots),
        groups=len(chosen),
        per_group=per_group,
        live=None if live is None else torch.tensor(live, dtype=torch.long, device=device),
        group_rows=torch.tensor(group_rows, dtype=torch.long, device=device),
        row_places=torch.tensor(places, dtype=torch.long, device=device),
        has_base=has_base,
        uniform=not has_base and places == list(range(len(slots))) and len(group_rows) == len(slots),
    )


def row_map(slots: list[int], adapters: tuple[int, ...], device: torch.device, *, split: int = 0) -> RowMap:
    """``slots``: each row's slot (0 = no adapter), every one among ``adapters`` (ascending); ``split``: where
    a second run of groups begins (0: one run)."""
    bounds = [0, split, len(slots)] if 0 < split < len(slots) else [0, len(slots)]
    place = {adapter: i for i, adapter in enumerate(adapters, start=1)}
    return RowMap(
        rows=len(slots),
        row_slots=torch.tensor(slots, dtype=torch.long, device=device),
        row_pool=torch.tensor([place.get(slot, 0) for slot in slots], dtype=torch.long, device=device),
        parts=tuple(_groups(slots[a:b], adapters, a, device) for a, b in itertools.pairwise(bounds)),
    )


@dataclass
class LoRABatch:
    """The row -> slot map of the forward about to run, shared by every wrapped layer.

    ``adapters``: the adapters whose weights the layers hold gathered
    (ascending slot: the pool of :mod:`workers.engine.weight_pool`, a
    superset of the forward's). Layers gather them only when that *set*
    changes (``weights_version``); rows joining or leaving with adapters
    already held cost a few index ops, not a weight copy. ``active``: some
    row of the forward has an adapter (else the layers run the base alone).

    A packed forward (:meth:`~workers.engine.runner.Runner.packed`: decode
    rows' tokens and joining rows' prompts in one sequence) also has
    ``packed``, the map of its tokens, which the decoder's modules see; its
    LM head sees one vector per row and uses ``map``. A module picks the map
    whose row count its input has (:meth:`map_for`).
    """

    adapters: tuple[int, ...] = ()
    map: RowMap = field(default_factory=RowMap)
    packed: RowMap | None = None
    active: bool = False  # some row has an adapter
    rank: int = 0  # the widest rank among loaded slots: columns beyond it are zero and skipped
    weights_version: int = 0

    def set(
        self,
        slots: list[int],
        device: torch.device,
        *,
        rank: int,
        pool: tuple[int, ...] | None = None,
        tokens: list[int] | None = None,
    ) -> None:
        """``slots``: each row's slot ([rows], 0 = no adapter); ``rank``: the widest rank in any slot;
        ``pool``: the adapters whose weights the layers hold, ascending, every adapter of ``slots`` among
        them (default: exactly those); ``tokens``: for a packed forward, each row's tokens in it, in order."""
        needed = {s for s in slots if s}
        adapters = tuple(sorted(needed)) if pool is None else pool
        if not needed <= set(adapters):
            raise ValueError(f"the weight pool {adapters} lacks adapters of the forward {sorted(needed)}")
        if adapters != self.adapters or rank != self.rank:
            self.weights_version += 1
        self.adapters, self.rank, self.active = adapters, rank, bool(needed)
        self.map = row_map(slots, adapters, device)
        self.packed = None
        if tokens is not None:
            if len(tokens) != len(slots):
                raise ValueError(f"{len(tokens)} token counts for {len(slots)} rows")
            expanded = [slot for slot, n in zip(slots, tokens, strict=True) for _ in range(n)]
            decode = next((i for i, n in enumerate(tokens) if n > 1), len(tokens))  # the one-token rows lead
            self.packed = row_map(expanded, adapters, device, split=decode)

    def map_for(self, vectors: int) -> RowMap:
        """The map for a module input of ``vectors`` vectors (rows x steps, or a packed forward's tokens)."""
        if self.packed is not None and vectors == self.packed.rows:
            return self.packed
        return self.map

    def touch(self) -> None:
        """A slot's weights changed: every layer re-copies the batch's adapters."""
        self.weights_version += 1


class SlotLayer(nn.Module):
    """A base module plus every slot's LoRA pair and DoRA scale; subclasses compute the delta ``d``.

    ``transposed``: the base weight is stored [in, out] (Conv1D, an embedding's [vocab, dim]) rather
    than nn.Linear's [out, in]. ``mergeable``: the adapter manager may merge a delta into its weight
    (a block linear whose weight no other module shares).
    """

    lora_a: torch.Tensor  # [slots, in, r_max] buffer; slot 0 stays zero
    lora_b: torch.Tensor  # [slots, r_max, out] buffer, scale included
    dora_g: torch.Tensor  # [slots, out] buffer; 1 where a slot is plain LoRA

    def __init__(
        self, base: nn.Module, *, in_f: int, out_f: int, transposed: bool, slots: int, r_max: int, batch: LoRABatch
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = in_f, out_f
        self.transposed = transposed
        self.batch = batch
        self.r_max = r_max
        self.mergeable = False
        self.is_edge = False  # the input embedding or the LM head (never merged; a saved copy must equal it)
        self.merged = False  # the base weight holds the delta of the batch's only adapter
        dtype, device = self.weight.dtype, self.weight.device
        self.register_buffer("lora_a", torch.zeros(slots, in_f, r_max, dtype=dtype, device=device))
        self.register_buffer("lora_b", torch.zeros(slots, r_max, out_f, dtype=dtype, device=device))
        self.register_buffer("dora_g", torch.ones(slots, out_f, dtype=dtype, device=device))
        self.filled: dict[int, int] = {}  # slot -> rank, for slots with weights in this module
        self.dora: set[int] = set()  # slots whose adapter is DoRA in this module
        self._version = -1
        self._skip = True  # no adapter of the batch touches this module
        self._dora_active = False  # some adapter of the batch is DoRA in this module

    @property
    def weight(self) -> torch.Tensor:
        weight = self.base.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def weight_out_in(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` (default: the base's) as a [out, in] view, the layout LoRA's ``B @ A`` has."""
        w = self.weight if weight is None else weight
        return w.t() if self.transposed else w

    def load_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's ``A`` [in, r] and scaled ``B`` [r, out] in ``slot``; ``None`` clears it.

        Writes each element once (a copy, and zeros only beyond the adapter's
        rank): a swap costs a memory copy of the adapter, nothing more.
        """
        if a is None or b is None:
            if slot in self.filled:
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()
                del self.filled[slot]
            self.set_dora(slot, None)
            return
        r = a.shape[1]
        self.lora_a[slot, :, :r].copy_(a)
        self.lora_a[slot, :, r:].zero_()
        self.lora_b[slot, :r, :].copy_(b)
        self.lora_b[slot, r:, :].zero_()
        self.filled[slot] = r

    def set_dora(self, slot: int, g: torch.Tensor | None) -> None:
        """DoRA's per-output scale ``g`` [out] for ``slot`` (:func:`workers.engine.dora.magnitude_scale`);
        ``None``: plain LoRA."""
        if g is None:
            if slot in self.dora:
                self.dora_g[slot].fill_(1)
                self.dora.discard(slot)
            return
        self.dora_g[slot].copy_(g)
        self.dora.add(slot)

    def refresh(self) -> None:
        """The batch's set of adapters (or a slot's weights) changed: re-read what this layer needs."""
        batch = self.batch
        self._skip = not (set(batch.adapters) & self.filled.keys())
        self._dora_active = bool(set(batch.adapters) & self.dora)

    def vectors(self, x: torch.Tensor) -> int:
        """How many input vectors ``x`` holds (rows x steps): which of the batch's maps it is for."""
        return x.shape[:-1].numel()

    def delta(self, x: torch.Tensor, m: RowMap) -> torch.Tensor:
        """Each row's ``x @ A[slot] @ B[slot]``, [rows, steps, out] in row order (zero for base rows)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [rows, steps, ...] (a packed forward's: [1, tokens, ...]) -> the base's output plus each row's
        delta."""
        y: torch.Tensor = self.base(x)
        batch = self.batch
        if self.merged or not batch.active:
            return y
        if self._version != batch.weights_version:
            self.refresh()
            self._version = batch.weights_version  # after the gather: a failed one is retried
        if self._skip:
            return y
        m = batch.map if batch.packed is None else batch.map_for(self.vectors(x))
        d = self.delta(x, m)
        y3 = y.reshape(m.rows, -1, self.out_features)
        if not self._dora_active:
            return (y3 + d).reshape(y.shape)
        assert m.row_slots is not None
        g = self.dora_g.index_select(0, m.row_slots).unsqueeze(1)  # [rows, 1, out]
        bias: torch.Tensor | None = getattr(self.base, "bias", None)
        plain = y3 if bias is None else y3 - bias
        return (y3 + (g - 1) * plain + g * d).reshape(y.shape)


class MixedLoRA(SlotLayer):
    """A linear module (``nn.Linear`` or ``Conv1D``) with every slot's LoRA, applied per adapter group.

    For each row ``i`` of the batch, with ``slot = batch``'s row -> slot map::

        y[i] += scale[slot[i]] * B[slot[i]] @ (A[slot[i]] @ x[i])

    with PEFT's ``A`` [r, in] and ``B`` [out, r]; stored transposed and
    pre-scaled as ``lora_a`` [slots, in, r_max] and ``lora_b`` [slots, r_max, out].
    """

    def __init__(self, base: nn.Module, *, slots: int, r_max: int, batch: LoRABatch) -> None:
        if isinstance(base, Conv1D):
            in_f, out_f = base.weight.shape
        elif isinstance(base, nn.Linear):
            out_f, in_f = base.weight.shape
        else:
            raise TypeError(f"cannot wrap {type(base).__name__}: only nn.Linear and Conv1D")
        transposed = isinstance(base, Conv1D)
        super().__init__(
            base, in_f=int(in_f), out_f=int(out_f), transposed=transposed, slots=slots, r_max=r_max, batch=batch
        )
        self._a: torch.Tensor | None = None  # [adapters, in, r] of the batch's adapters
        self._b: torch.Tensor | None = None  # [adapters, r, out]

    def refresh(self) -> None:
        super().refresh()
        batch = self.batch
        if self._skip:
            self._a = self._b = None
            return
        index = torch.tensor(batch.adapters, dtype=torch.long, device=self.lora_a.device)
        self._a = self.lora_a[:, :, : batch.rank].index_select(0, index)
        self._b = self.lora_b[:, : batch.rank, :].index_select(0, index)

    def delta(self, x: torch.Tensor, m: RowMap) -> torch.Tensor:
        x3 = x.reshape(m.rows, -1, self.in_features)
        if len(m.parts) == 1:  # every forward but a packed one
            return self._part(x3, m.parts[0])
        return torch.cat([self._part(x3[p.start : p.stop], p) for p in m.parts])

    def _part(self, x3: torch.Tensor, p: Groups) -> torch.Tensor:
        assert self._a is not None and self._b is not None
        rows, steps = x3.shape[0], x3.shape[1]
        if not p.per_group:  # no row here has an adapter
            return x3.new_zeros(rows, steps, self.out_features)
        a, b = self._a, self._b
        if p.live is not None:
            a, b = a.index_select(0, p.live), b.index_select(0, p.live)
        if p.uniform:  # rows already sit in adapter order, one full group each: views only
            xg = x3.reshape(p.groups, -1, self.in_features)
            return torch.bmm(torch.bmm(xg, a), b).reshape(rows, steps, self.out_features)
        xg = x3.index_select(0, p.group_rows).reshape(p.groups, p.per_group * steps, self.in_features)
        d = torch.bmm(torch.bmm(xg, a), b).reshape(p.groups * p.per_group, steps, self.out_features)
        if p.has_base:
            d = torch.cat([d, d.new_zeros(1, steps, self.out_features)])
        return d.index_select(0, p.row_places)
