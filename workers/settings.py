"""The worker's settings (env prefix ``LORAQ_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.settings import DatabaseSettings
from workers.contract.settings import QueueSettings
from workers.demo_model import DEMO_BASE


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    base_model: Path = Field(default=DEMO_BASE, description="Local Hugging Face model directory.")
    device: str = Field(default="cpu", description="torch device of the engine, e.g. cuda:0.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_batch_rows: int = Field(default=16, ge=1, le=1024, description="Rows per batch; also the thread pool size.")
    batch_wait_ms: int = Field(default=25, ge=0, le=5000, description="How long a batch waits to fill.")
    max_loras: int = Field(default=8, ge=1, description="Adapters resident at once.")
    queue_refresh_s: float = Field(default=1.0, gt=0, description="How often the worker heartbeats.")
    plan_max_queues: int = Field(
        default=256, ge=1, le=100_000, description="Queues with work a plan tick reads at most, longest waiting first."
    )
    plan_interval_ms: int = Field(
        default=100, ge=10, le=10_000, description="How often the worker re-plans which adapter queues it consumes."
    )
    reconcile_interval_s: float = Field(
        default=10.0, gt=0, description="How often one worker re-publishes queued jobs whose message was lost."
    )
    max_attempts: int = Field(default=3, ge=1, description="Runs of a job that fails unexpectedly before it fails.")
    sticky_max_wait_s: float = Field(
        default=30.0, gt=0, description="Sticky bound: a queue whose oldest job waited this long is served next."
    )
    min_swap_depth: int = Field(default=4, ge=1, description="Jobs a queue needs before it is worth an adapter swap.")
    engine: Literal["loraq", "peft"] = Field(
        default="loraq", description="loraq: mixed-LoRA layers with continuous batching; peft: PEFT's generate."
    )
    max_lora_rank: int = Field(default=64, ge=1, le=1024, description="Largest adapter rank a slot holds.")
    max_cpu_loras_mb: int = Field(default=1024, ge=0, description="Host-memory cache of adapters, in MiB (LRU).")
    merge_adapters: bool = Field(
        default=True,
        description="Merge the adapter of a single-adapter batch into the base weights (reserves a weight copy).",
    )
    embedding_lora: bool = Field(
        default=True, description="Serve LoRA on the input embedding and the LM head (slots of vocab x rank)."
    )
    quantize: Literal["none", "int8"] = Field(
        default="none", description="Quantize the shared base's block linears (int8: torch dynamic int8, CPU)."
    )
    max_row_tokens: int | None = Field(
        default=None,
        ge=2,
        description="Longest row (prompt + new tokens) the engine takes; each KV slot is this long, allocated at "
        "start. Default: the model's positions.",
    )
    memory_budget_mb: int | None = Field(
        default=None, ge=1, description="Engine memory budget; default 90% of the GPU, or a quarter of host RAM."
    )
    adapter_cache_dir: Path | None = Field(
        default=None, description="Disk cache of adapters from remote stores; default $LORAQ_HOME/adapter-cache."
    )
    fault_kill_marker: str | None = Field(
        default=None,
        description="Fault injection for tests and drills: a job whose prompt contains this text kills its worker.",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port (/metrics); unset: off."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics port binds (0.0.0.0 in compose).")
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)  # what the gateway must agree on

    @property
    def reconcile_grace_s(self) -> float:
        """A queued job is looked for only after a dead worker's messages are surely back in their queue."""
        return 2 * self.queue.visibility_timeout_s + 10
