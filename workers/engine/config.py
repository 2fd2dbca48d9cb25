"""The engine's settings: one frozen value, the single place its knobs are written.

Every engine (the loraq engine and the PEFT baseline) and every caller (the
worker, benchmarks, tests) passes one :class:`EngineConfig`, so adding a knob
touches this file and the code that reads it, not every constructor call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workers.settings import WorkerSettings

DType = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    base_model: Path  # a local Hugging Face model directory
    device: str = "cpu"  # a torch device, e.g. cuda:0
    dtype: DType = "float32"
    max_loras: int = 8  # adapters in device slots at once
    max_rows: int = 16  # rows in the running batch at once
    max_lora_rank: int = 64  # the widest adapter a slot holds
    max_cpu_loras_mb: int = 1024  # host-memory cache of adapters (LRU by bytes)
    memory_budget_mb: int | None = None  # None: 90 % of the GPU, or a quarter of host RAM
    max_row_tokens: int | None = None  # a KV slot's length, the longest row; None: the model's positions
    cache_dir: Path | None = None  # disk cache of adapters from remote stores; None: a temp directory
    merge_adapters: bool = True  # merged fast path for single-adapter batches (reserves a copy of the weights)
    embedding_lora: bool = True  # the input embedding and the LM head take adapters (2 x slots x vocab x r_max)
    quantize: Literal["none", "int8"] = "none"  # the shared base's block linears (int8: CPU, float32)
    packed_steps: bool = True  # rows join in the decode step's forward (SDPA models), not a prefill of their own

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> EngineConfig:
        """The worker's engine, as its ``LORAQ_*`` environment describes it."""
        return cls(
            base_model=settings.base_model,
            device=settings.device,
            dtype=settings.dtype,
            max_loras=settings.max_loras,
            max_rows=settings.max_batch_rows,
            max_lora_rank=settings.max_lora_rank,
            max_cpu_loras_mb=settings.max_cpu_loras_mb,
            memory_budget_mb=settings.memory_budget_mb,
            max_row_tokens=settings.max_row_tokens,
            cache_dir=settings.adapter_cache_dir or settings.db.home / "adapter-cache",
            merge_adapters=settings.merge_adapters,
            embedding_lora=settings.embedding_lora,
            quantize=settings.quantize,
        )
