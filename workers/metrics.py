"""A worker process's Prometheus metrics, served on ``LORAQ_METRICS_PORT`` (``/metrics``).

Labels are bounded: adapter names (as many as the registry holds), version
numbers, tiers and statuses; never job ids. Rates (tokens/s, jobs/s) are
``rate()`` over the counters. The default registry also carries the process
collectors (``process_resident_memory_bytes`` is the worker's memory use on a
CPU; ``loraq_worker_device_memory_bytes`` on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_LOAD = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

BATCHES = Counter("loraq_worker_batches", "Batches the worker ran.")
BATCH_ROWS = Histogram("loraq_worker_batch_rows", "Rows per batch.", buckets=(1, 2, 4, 8, 12, 16, 24, 32, 64, 128))
BATCH_ADAPTERS = Histogram(
    "loraq_worker_batch_adapters", "Distinct adapter versions per batch.", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
JOBS = Counter("loraq_worker_jobs", "Jobs this worker recorded, by outcome.", ["adapter", "version", "status"])
PROMPT_TOKENS = Counter("loraq_worker_prompt_tokens", "Prompt tokens of the jobs this worker ran.", ["adapter"])
COMPLETION_TOKENS = Counter("loraq_worker_completion_tokens", "Tokens this worker generated.", ["adapter"])
QUEUE_WAIT = Histogram(
    "loraq_worker_queue_wait_seconds", "From a job's acceptance to its batch start.", ["adapter"], buckets=_LATENCY
)
RUN_TIME = Histogram("loraq_worker_run_seconds", "A job's batch, start to recorded.", ["adapter"], buckets=_LATENCY)
ROWS_IN_FLIGHT = Gauge("loraq_worker_rows_in_flight", "Jobs handed to the engine and not yet done.")
ADAPTER_LOADS = Counter(
    "loraq_worker_adapter_loads",
    "Adapter loads by the tier they were loaded into: disk (fetched from a store), host (read and checked), "
    "slot (copied to the device).",
    ["tier"],
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loraq_worker_adapter_load_seconds", "Time of one adapter load into a tier.", ["tier"], buckets=_LOAD
)
ADAPTER_EVICTIONS = Counter("loraq_worker_adapter_evictions", "Adapters evicted, by tier (host, slot).", ["tier"])
ADAPTER_MERGES = Counter(
    "loraq_worker_adapter_merges", "Merged fast path: adapters merged into / unmerged from the base.", ["kind"]
)
ADAPTER_MERGE_SECONDS = Histogram(
    "loraq_worker_adapter_merge_seconds", "Time of one merge or unmerge, by kind.", ["kind"], buckets=_LOAD
)
RESIDENT_ADAPTERS = Gauge("loraq_worker_resident_adapters", "Adapters in device slots now.")
MEMORY_BUDGET = Gauge(
    "loraq_worker_memory_budget_bytes",
    "The engine's memory plan: budget, weights, slots, merge_copy, activations, kv (the KV cache).",
    ["part"],
)
KV_TOKENS = Gauge("loraq_worker_kv_cache_tokens", "KV cache capacity of the memory plan, in tokens.")
DEVICE_MEMORY = Gauge("loraq_worker_device_memory_bytes", "Memory torch holds on the device (GPU only).")


def serve(port: int, *, host: str) -> None:
    start_http_server(port, addr=host)


def watch_device_memory(read: Callable[[], float]) -> None:
    DEVICE_MEMORY.set_function(read)
