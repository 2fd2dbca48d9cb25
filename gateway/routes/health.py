"""``/healthz`` (the process answers) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import PublisherDep, SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(session: SessionDep, publisher: PublisherDep) -> JSONResponse:
    checks: dict[str, str] = {}

    def db() -> None:
        session.execute(text("SELECT 1"))

    for name, probe in (("database", db), ("redis", publisher.ping)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
