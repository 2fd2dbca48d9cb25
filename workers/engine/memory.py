"""The worker's memory budget, computed once at start-up and printed.

Pure arithmetic over plain numbers (torch-free, unit-tested). The budget is
what the engine may use on its device; weights, adapter slots and the copy
the merged fast path keeps of the weights it overwrites are fixed costs, a
share is kept for activations, and the rest is KV cache, counted in tokens.
With a quantized base, the plan also says what the weights would cost
unquantized: the saving that every adapter shares.

The KV cache is allocated once, as one slot per running row, each as long
as the longest row the model takes (``row_tokens``, its positions): as many
slots as the KV tokens hold, at most ``max_rows``. A row never outgrows its
slot, and a burst of long requests waits for a free slot instead of ending
in an out-of-memory crash. A budget too small for ``max_rows`` full slots
runs fewer rows at once, not shorter ones.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATION_SHARE = 0.1  # of what is left after weights and slots


@dataclass(frozen=True)
class MemoryBudget:
    budget: int  # bytes the engine may use
    weights: int
    slots: int  # stacked LoRA slot tensors
    activations: int
    kv_bytes_per_token: int
    kv_tokens: int  # KV cache room, in tokens over all running rows
    kv_rows: int  # slots of the preallocated KV cache: rows that run at once
    row_tokens: int  # tokens per slot: the longest row (prompt + new tokens)
    merge_copy: int = 0  # the merged fast path's copy of the weights a merge overwrites
    quantized: str | None = None  # the base's quantization ("int8"), None: full precision
    full_weights: int = 0  # what the weights cost unquantized (= weights when not quantized)

    def describe(self) -> str:
        mib = 2**20
        weights = f"weights {self.weights / mib:.1f}"
        if self.quantized:
            saved = self.full_weights - self.weights
            weights += f" ({self.quantized}; {self.full_weights / mib:.1f} unquantized, saves {saved / mib:.1f})"
        merge = f" + merge copy {self.merge_copy / mib:.1f}" if self.merge_copy else ""
        return (
            f"memory budget {self.budget / mib:.0f} MiB = {weights} + "
            f"LoRA slots {self.slots / mib:.1f}{merge} + activations {self.activations / mib:.1f} + "
            f"KV cache {self.kv_tokens} tokens x {self.kv_bytes_per_token} B "
            f"({self.kv_rows} row slots x {self.row_tokens} tokens preallocated)"
        )


class BudgetTooSmall(ValueError):
    """The configured budget cannot hold the model plus one full-length row's KV slot."""


def kv_bytes_per_token(*, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    return 2 * layers * kv_heads * head_dim * dtype_bytes  # keys and values


def plan(
    *,
    budget: int,
    weights: int,
    slots: int,
    kv_per_token: int,
    row_tokens: int,
    max_rows: int,
    merge_copy: int = 0,
    quantized: str | None = None,
    full_weights: int | None = None,
) -> MemoryBudget:
    """Split ``budget`` and size the KV slots: at most ``max_rows`` slots of ``row_tokens`` tokens (the
    longest row); refuse to start when not even one slot fits."""
    fixed = weights + slots + merge_copy
    rest = budget - fixed
    activations = int(max(0, rest) * ACTIVATION_SHARE)
    kv_tokens = max(0, rest - activations) // kv_per_token
    if kv_tokens < row_tokens:
        need = fixed + int(row_tokens * kv_per_token / (1 - ACTIVATION_SHARE))
        raise BudgetTooSmall(
            f"a memory budget of {budget / 2**20:.0f} MiB leaves KV cache for {kv_tokens} tokens, fewer than one "
            f"full-length row ({row_tokens}); set LORAQ_MEMORY_BUDGET_MB to at least {need / 2**20:.0f}, "
            "or lower LORAQ_MAX_LORAS / LORAQ_MAX_LORA_RANK (or set LORAQ_MERGE_ADAPTERS=false)"
        )
    return MemoryBudget(
        budget=budget,
        weights=weights,
        slots=slots,
        activations=activations,
        kv_bytes_per_token=kv_per_token,
        kv_tokens=kv_tokens,
        kv_rows=min(max_rows, kv_tokens // row_tokens),
        row_tokens=row_tokens,
        merge_copy=merge_copy,
        quantized=quantized,
        full_weights=weights if full_weights is None else full_weights,
    )
