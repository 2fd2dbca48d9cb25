"""The memory plan of a loaded engine: what its model costs, split by :func:`memory.plan`, published.

Measures the loaded model (weights, the stacked LoRA slots, KV bytes per
token from its config) and the device's memory, so the pure arithmetic in
:mod:`workers.engine.memory` can refuse to start an engine that cannot hold
one full-length row, and size the KV cache's row slots, allocated once.
"""

from __future__ import annotations

import os

import torch

from workers import metrics
from workers.engine import memory
from workers.engine.kv import kv_dims
from workers.engine.runner import Runner


def plan_memory(
    runner: Runner,
    *,
    budget_mb: int | None,
    max_rows: int,
    merge_copy: bool = False,
    max_row_tokens: int | None = None,
) -> memory.MemoryBudget:
    """The budget is ``budget_mb`` if set, else 90 % of the GPU, else a quarter of host RAM (room for the
    gateway, Redis and other workers); raises :class:`memory.BudgetTooSmall` below one full row.
    ``max_rows``: the most KV slots wanted; ``merge_copy``: reserve the merged fast path's copy of every
    mergeable weight; ``max_row_tokens``: a slot's length, if shorter than the model's positions (a
    long-context model's slots would otherwise take the budget for a few rows)."""
    dims = kv_dims(runner.model.config)
    per_token = memory.kv_bytes_per_token(
        layers=dims.layers,
        kv_heads=dims.kv_heads,
        head_dim=dims.head_dim,
        dtype_bytes=torch.finfo(runner.dtype).bits // 8,
    )
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())  # quantized ones are not
    quantized = runner.quantized
    slots = sum(b.numel() * b.element_size() for layer in runner.layers.values() for b in layer.buffers())
    mergeable = [layer.weight for layer in runner.layers.values() if layer.mergeable]
    copy = sum(w.numel() * w.element_size() for w in mergeable) if merge_copy else 0
    if budget_mb is not None:
        budget = budget_mb * 2**20
    elif runner.device.type == "cuda":
        budget = int(0.9 * torch.cuda.mem_get_info(runner.device)[1])
    else:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return memory.plan(
        budget=budget,
        weights=weights + (quantized.nbytes if quantized else 0),
        slots=slots,
        kv_per_token=per_token,
        row_tokens=min(runner.max_positions, max_row_tokens or runner.max_positions),
        max_rows=max_rows,
        merge_copy=copy,
        quantized=quantized.mode if quantized else None,
        full_weights=weights + quantized.full_nbytes if quantized else None,
    )


def publish(plan: memory.MemoryBudget, device: torch.device) -> None:
    """The plan as gauges, by part (the KV cache's part: its slots, as allocated); on CUDA, the
    allocated device memory too."""
    kv_tokens = plan.kv_rows * plan.row_tokens
    kv = kv_tokens * plan.kv_bytes_per_token
    parts = {
        "budget": plan.budget,
        "weights": plan.weights,
        "slots": plan.slots,
        "merge_copy": plan.merge_copy,
        "activations": plan.activations,
    }
    for part, value in {**parts, "kv": kv}.items():
        metrics.MEMORY_BUDGET.labels(part).set(value)
    metrics.KV_TOKENS.set(kv_tokens)
    if device.type == "cuda":
        metrics.watch_device_memory(lambda: float(torch.cuda.memory_allocated(device)))
