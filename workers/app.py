"""The worker's composition root: ``celery -A workers.app worker -P threads``.

:func:`create_worker_app` builds everything from one :class:`WorkerSettings`,
as the gateway's ``create_app`` does; importing this module builds nothing.
Celery's ``-A workers.app`` asks the module for ``app``, and only then
(:func:`__getattr__`) is the app created from the environment.

What runs in a worker process (``docs/architecture.md`` draws it):

- the **engine** (with its runtime: batching, recording), loaded when the
  worker starts, before it consumes, so a started worker is a warm one; a
  worker that cannot load it exits;
- the Celery **thread pool**: each task hands its job(s) to the runtime and
  waits; messages are acknowledged after their results are recorded;
- the **planner** (a consumer bootstep on Celery's consumer timer): which
  adapter queues to consume, read from the backlog index;
- the **heartbeat** and the **reconciler**, each on a thread of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.signals import setup_logging
from sqlalchemy.orm import Session, sessionmaker

from registry import logs
from registry.adapters import BASE_ADAPTER
from registry.db import engine_from_settings, session_factory
from workers import metrics
from workers.contract.celery_app import Role, make_celery
from workers.contract.messages import Publisher
from workers.contract.names import cancel_key
from workers.contract.notify import Notifier, push_client
from workers.contract.streams import Deltas, DeltaWriter
from workers.generation import Generator
from workers.runtime import Runtime
from workers.services.heartbeat import Heartbeat
from workers.services.periodic import Periodic
from workers.services.planner import QueueReader, make_planner
from workers.services.reconciler import Reconciler
from workers.settings import WorkerSettings
from workers.sticky import StickyConfig
from workers.tasks import register_tasks

log = logging.getLogger("loraq.worker")


class Cancellations:
    """Which running jobs the gateway has cancelled: one MGET of their cancel flags per engine step."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __call__(self, job_ids: Sequence[str]) -> set[str]:
        try:
            flags = self.client.mget([cancel_key(j) for j in job_ids])
        except redis.RedisError:
            return set()
        return {j for j, flag in zip(job_ids, flags, strict=True) if flag}


def make_generator(
    settings: WorkerSettings, cancelled: Callable[[Sequence[str]], set[str]], deltas: Deltas | None = None
) -> Generator:
    """The engine the settings name; torch is imported here, in the worker process only."""
    from workers.engine import EngineConfig, build_generator

    config = EngineConfig.from_settings(settings)
    return build_generator(config, kind=settings.engine, cancelled=cancelled, deltas=deltas)


class RuntimeHolder:
    """Builds the engine and its runtime once per process: at start-up, or on first use.

    ``push`` is the Redis client of what the worker tells gateways as it happens: token deltas (from
    the engine's thread) and completion notifications (:func:`~workers.contract.notify.push_client`).
    """

    def __init__(
        self, settings: WorkerSettings, sessions: sessionmaker[Session], cancelled: Cancellations, push: redis.Redis
    ) -> None:
        self.settings, self.sessions, self.cancelled, self.push = settings, sessions, cancelled, push
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None

    def start(self, worker_name: str) -> Runtime:
        with self._lock:
            if self._runtime is None:
                generator = make_generator(self.settings, self.cancelled, DeltaWriter(self.push))
                log.warning("%s", generator.describe())
                self._runtime = Runtime(
                    generator=generator,
                    sessions=self.sessions,
                    worker_name=worker_name,
                    max_rows=self.settings.max_batch_rows,
                    wait_s=self.settings.batch_wait_ms / 1000,
                    max_attempts=self.settings.max_attempts,
                    # The loraq engine takes rows from several batches into its running batch.
                    in_flight=2 if self.settings.engine == "loraq" else 1,
                    fault_kill_marker=self.settings.fault_kill_marker,
                    notifier=Notifier(self.push),
                )
            return self._runtime

    def current(self) -> Runtime | None:
        return self._runtime

    def resident(self) -> set[str]:
        """Adapters in the engine's slots; the bare base is no adapter an operator looks for."""
        current = self._runtime
        return current.resident_adapters() - {BASE_ADAPTER} if current else set()

    def loads(self) -> int:
        current = self._runtime
        return current.generator.adapter_loads() if current else 0


def make_lifecycle(
    *, runtime: RuntimeHolder, services: Sequence[Periodic], settings: WorkerSettings
) -> type[bootsteps.StartStopStep]:
    """A worker bootstep: loads the engine before the consumer starts, then runs the services."""

    class Lifecycle(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            try:
                runtime.start(worker.hostname)
            except Exception:  # Celery would log it and then fail every job: exit instead
                log.critical("cannot load the engine; the worker exits", exc_info=True)
                os._exit(3)

        def start(self, worker: Any) -> None:
            if settings.metrics_port is not None:
                metrics.serve(settings.metrics_port, host=settings.metrics_host)
                log.warning("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
            for service in services:
                service.start()

        def stop(self, worker: Any) -> None:
            for service in services:
                service.stop()

    return Lifecycle


def create_worker_app(settings: WorkerSettings) -> Celery:
    app = make_celery(settings.queue, role=Role.WORKER)
    # Three batches of threads: two batches in the engine (the second's rows join as the first's
    # finish) and the next one's messages arriving; prefetch stays bounded at three batches.
    app.conf.update(worker_pool="threads", worker_concurrency=3 * settings.max_batch_rows)
    sessions = session_factory(engine_from_settings(settings.db))
    broker = redis.Redis.from_url(settings.queue.redis_url, socket_timeout=5, socket_connect_timeout=2)
    publisher = Publisher(app, fail_fast=False)
    push = push_client(settings.queue.redis_url)
    runtime = RuntimeHolder(settings, sessions, Cancellations(broker), push)
    reader = QueueReader(broker, limit=settings.plan_max_queues)
    register_tasks(
        app,
        lambda: runtime.current() or runtime.start(app.conf.get("worker_name") or "worker"),
        publisher=publisher,
        pulled=reader.pulled,
    )
    app.steps["consumer"].add(
        make_planner(
            read=reader.read,
            resident=runtime.resident,
            config=StickyConfig(
                slots=settings.max_loras,
                max_wait_s=settings.sticky_max_wait_s,
                batch_rows=settings.max_batch_rows,
                min_swap_depth=settings.min_swap_depth,
            ),
            plan_interval=settings.plan_interval_ms / 1000,
            chunk_jobs=settings.queue.bulk_chunk_jobs,
        )
    )
    services = worker_services(settings, runtime=runtime, sessions=sessions, broker=broker, publisher=publisher)
    app.steps["worker"].add(make_lifecycle(runtime=runtime, services=services, settings=settings))
    setup_logging.connect(_logging, weak=False, dispatch_uid="loraq.worker.logging")
    return app


def worker_services(
    settings: WorkerSettings,
    *,
    runtime: RuntimeHolder,
    sessions: sessionmaker[Session],
    broker: redis.Redis,
    publisher: Publisher,
) -> list[Periodic]:
    """The heartbeat and the reconciler, each on its own schedule."""
    current = runtime.current
    beat = Heartbeat(
        client=broker,
        name=lambda: r.worker_name if (r := current()) else None,
        resident=runtime.resident,
        loads=runtime.loads,
        ttl_s=max(3, int(3 * settings.queue_refresh_s)),
        metrics_port=settings.metrics_port,
    )
    reconciler = Reconciler(
        sessions=sessions,
        client=broker,
        publisher=publisher,
        grace_s=settings.reconcile_grace_s,
        lock_s=max(1, int(settings.reconcile_interval_s)),
    )
    return [
        Periodic("heartbeat", beat.run_once, interval_s=settings.queue_refresh_s),
        Periodic("reconciler", reconciler.run_once, interval_s=settings.reconcile_interval_s),
    ]


def _logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (JSON off a terminal, see registry.logs) instead of Celery's."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else (loglevel or logging.INFO)
    logs.configure(level=level)


@functools.cache
def _app_from_environment() -> Celery:
    return create_worker_app(WorkerSettings())


def __getattr__(name: str) -> Celery:
    """``celery -A workers.app`` reads ``workers.app.app`` (or ``.celery``): build it then, once."""
    if name in ("app", "celery"):
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
