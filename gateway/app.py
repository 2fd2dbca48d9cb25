"""The FastAPI application factory (``uvicorn --factory gateway.app:create_app``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors, metrics
from gateway.backfiller import Backfiller
from gateway.batch_supervisor import BatchSupervisor
from gateway.body_limit import BodyLimit
from gateway.job_events import JobEvents
from gateway.limits import ModelLimits
from gateway.purger import Purger
from gateway.routes import adapters, batches, files, health, jobs, keys, openai, status, tenants, usage, webhooks
from gateway.settings import GatewaySettings
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.schedule import RetryPolicy
from registry import logs
from registry.db import engine_from_settings, session_factory
from workers.contract.messages import fail_fast_publisher


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    engine = engine_from_settings(settings.db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batches.start()
        app.state.purger.start()
        if settings.rollup_backfill:
            app.state.backfiller.start()
        app.state.webhooks.start()
        app.state.job_events.start()
        yield
        app.state.job_events.stop()
        app.state.batches.stop()
        app.state.purger.stop()
        app.state.backfiller.stop()
        app.state.webhooks.stop()
        engine.dispose()

    app = FastAPI(
        title="loraq",
        version="0.1.0",
        description="Queued generation over many LoRA adapters on one base model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    app.state.publisher = fail_fast_publisher(settings.queue)
    app.state.job_events = JobEvents(
        redis_url=settings.queue.redis_url,
        sessions=app.state.sessions,
        fallback_s=settings.wait_fallback_s,
        on_done=lambda: app.state.webhooks.wake(),  # a job ended: its webhook deliveries are due now
    )
    app.state.limits = ModelLimits.from_model_dir(settings.base_model)
    app.state.batches = BatchSupervisor(
        sessions=app.state.sessions, publisher=app.state.publisher, settings=settings, limits=app.state.limits
    )
    app.state.purger = Purger(
        sessions=app.state.sessions, policy=settings.retention(), interval_s=settings.purge_interval_s
    )
    app.state.backfiller = Backfiller(
        sessions=app.state.sessions, chunk=settings.backfill_chunk_rows, pause_s=settings.backfill_pause_s
    )
    app.state.webhooks = Dispatcher(
        sessions=app.state.sessions,
        allow=settings.webhook_allow,
        senders=settings.webhook_senders,
        timeout_s=settings.webhook_timeout_s,
        policy=RetryPolicy(base_s=settings.webhook_retry_base_s),
    )
    app.state.batches.on_event = app.state.webhooks.wake
    errors.install(app)
    metrics.install(app, sessions=app.state.sessions, redis_url=settings.queue.redis_url)
    routers = (health, jobs, openai, files, batches, adapters, keys, tenants, status, usage, webhooks)
    for module in routers:
        app.include_router(module.router)

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        upload_paths=("/v1/files",),
        max_upload_bytes=settings.max_file_bytes,
    )
    return app


def create_served_app() -> FastAPI:
    """The app as uvicorn serves it (``--factory gateway.app:create_served_app``): with loraq's log
    format (JSON lines off a terminal), which tests that build apps in-process do not want."""
    logs.configure()
    return create_app()
