"""The worker's composition root: ``celery -A workers.app worker -P threads``.

Reads :class:`WorkerSettings` from the environment once, builds the Celery
app, and loads the engine when the worker starts (not on the first job), so
a started worker is a warm worker. Use the threads pool: the engine and its
batching thread live in the worker process, shared by every task thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery.signals import celeryd_after_setup, setup_logging

from registry import logs
from registry.adapters import BASE_ADAPTER, active_adapter_names
from registry.db import engine_from_settings, session_factory
from registry.queues import CANCEL_KEY, ROUTES_EPOCH_KEY
from workers import heartbeat, metrics
from workers.celery_app import make_celery
from workers.generation import Generator
from workers.queue_consumer import make_sticky_consumer
from workers.queue_state import read_states
from workers.reconcile import reconcile_once
from workers.runtime import Runtime
from workers.settings import WorkerSettings
from workers.sticky import StickyConfig
from workers.tasks import register_tasks

log = logging.getLogger("loraq.worker")

settings = WorkerSettings()
app = make_celery(settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s)
# Three batches of threads: two batches in the engine (the second's rows join
# as the first's finish) and the next one's messages arriving; prefetch stays
# bounded at three batches.
app.conf.update(worker_pool="threads", worker_concurrency=3 * settings.max_batch_rows)
sessions = session_factory(engine_from_settings(settings.db))


def _make_generator() -> Generator:
    """The engine the settings name; torch is imported here only, in the worker."""
    if settings.engine == "peft":
        from workers.engine_peft import PeftGenerator

        return PeftGenerator(
            base_model=settings.base_model,
            device=settings.device,
            dtype=settings.dtype,
            max_loras=settings.max_loras,
            cancelled=_cancelled,
        )
    from workers.engine import LoraEngine

    return LoraEngine(
        base_model=settings.base_model,
        device=settings.device,
        dtype=settings.dtype,
        max_loras=settings.max_loras,
        max_rows=settings.max_batch_rows,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras_mb=settings.max_cpu_loras_mb,
        memory_budget_mb=settings.memory_budget_mb,
        cache_dir=settings.adapter_cache_dir or settings.db.home / "adapter-cache",
        cancelled=_cancelled,
    )


class _RuntimeHolder:
    """Builds the runtime once per process, at start-up or on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None

    def start(self, worker_name: str) -> Runtime:
        with self._lock:
            if self._runtime is None:
                generator = _make_generator()
                log.warning("%s", generator.describe())
                self._runtime = Runtime(
                    generator=generator,
                    sessions=sessions,
                    worker_name=worker_name,
                    max_rows=settings.max_batch_rows,
                    wait_s=settings.batch_wait_ms / 1000,
                    max_attempts=settings.max_attempts,
                    # The loraq engine takes rows from several batches into its running batch.
                    in_flight=2 if settings.engine == "loraq" else 1,
                    fault_kill_marker=settings.fault_kill_marker,
                )
            return self._runtime

    def current(self) -> Runtime | None:
        return self._runtime

    def get(self) -> Runtime:
        return self._runtime or self.start(app.conf.get("worker_name") or "worker")


runtime = _RuntimeHolder()
register_tasks(app, runtime.get)


def _adapters() -> list[str]:
    with sessions() as session:
        return active_adapter_names(session)


broker = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)


def _cancelled(job_ids: Sequence[str]) -> set[str]:
    """Which of these running jobs the gateway has cancelled (one MGET)."""
    try:
        flags = broker.mget([CANCEL_KEY.format(job_id=j) for j in job_ids])
    except redis.RedisError:
        return set()
    return {j for j, flag in zip(job_ids, flags, strict=True) if flag}


def _resident() -> set[str]:
    current = runtime.current()
    return current.resident_adapters() if current else set()


_last_reconcile = 0.0


def _reconcile() -> None:
    """Every LORAQ_RECONCILE_INTERVAL_S, one worker re-publishes jobs whose message was lost."""
    global _last_reconcile
    if time.monotonic() - _last_reconcile < settings.reconcile_interval_s:
        return
    _last_reconcile = time.monotonic()
    lock_s = max(1, int(settings.reconcile_interval_s))
    reconcile_once(sessions=sessions, client=broker, app=app, grace_s=settings.reconcile_grace_s, lock_s=lock_s)


def _heartbeat() -> None:
    tags = heartbeat.held_delivery_tags()
    heartbeat.refresh_visibility(broker, tags)
    current = runtime.current()
    if current is not None:
        ttl = max(3, int(3 * settings.queue_refresh_s))
        heartbeat.announce(
            broker,
            name=current.worker_name,
            resident=_resident() - {BASE_ADAPTER},  # the bare base is no adapter an operator looks for
            holding=len(tags),
            loads=current.generator.adapter_loads(),
            ttl_s=ttl,
            metrics_port=settings.metrics_port,
        )
        _reconcile()


app.steps["consumer"].add(
    make_sticky_consumer(
        adapters=_adapters,
        states=lambda names: read_states(broker, names),
        resident=_resident,
        heartbeat=_heartbeat,
        routes_epoch=lambda: broker.get(ROUTES_EPOCH_KEY),
        config=StickyConfig(
            slots=settings.max_loras,
            max_wait_s=settings.sticky_max_wait_s,
            batch_rows=settings.max_batch_rows,
            min_swap_depth=settings.min_swap_depth,
        ),
        plan_interval=settings.plan_interval_ms / 1000,
        refresh_interval=settings.queue_refresh_s,
        chunk_jobs=settings.bulk_chunk_jobs,
    )
)


@setup_logging.connect
def _logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (JSON off a terminal, see registry.logs) instead of Celery's."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else (loglevel or logging.INFO)
    logs.configure(level=level)


@celeryd_after_setup.connect
def _load_engine(sender: str, instance: Any, **_: Any) -> None:
    """Load the engine before consuming; a worker that cannot load it exits
    (Celery would only log the error and then fail every job)."""
    try:
        runtime.start(sender)
    except Exception:
        log.critical("cannot load the engine; the worker exits", exc_info=True)
        os._exit(3)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port, host=settings.metrics_host)
        log.warning("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
