"""The FastAPI application factory (``uvicorn --factory gateway.app:create_app``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from gateway import errors
from gateway.errors import error_response
from gateway.publisher import Publisher
from gateway.routes import adapters, health, jobs, keys
from gateway.settings import GatewaySettings
from registry.db import engine_from_settings, session_factory


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    engine = engine_from_settings(settings.db)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="loraq",
        version="0.1.0",
        description="Queued generation over many LoRA adapters on one base model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    app.state.publisher = Publisher(settings.redis_url)
    errors.install(app)
    for router in (health.router, jobs.router, adapters.router, keys.router):
        app.include_router(router)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return error_response(
                413,
                "request_too_large",
                f"request body is {length} bytes; the limit is {settings.max_body_bytes} (LORAQ_MAX_BODY_BYTES).",
                "too_large",
            )
        return await call_next(request)

    return app
