"""The one place errors become HTTP: ``{"error": {"code", "message", "type"}}``.

4xx for the caller's mistakes, 503 when a dependency is down, and an
unexpected failure is still JSON with a code, never a bare 500 page.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import ErrorKind, LoraqError

log = logging.getLogger(__name__)

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.JOB_FAILED: 502,
    ErrorKind.TIMEOUT: 504,
}


def error_response(
    status: int, code: str, message: str, kind: str, *, retry_after_s: int | None = None, **extra: object
) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message, "type": kind, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


async def _loraq_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LoraqError)
    return error_response(
        STATUS[exc.kind], exc.code, exc.message, exc.kind.value, retry_after_s=getattr(exc, "retry_after_s", None)
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return error_response(422, "invalid_request", f"{where}: {first['msg']}", "invalid", details=details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "route_not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), "invalid")


async def _db_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(
        503, "database_unavailable", "The registry database is unreachable; retry later.", "unavailable"
    )


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    log.info("integrity conflict: %s", exc)
    return error_response(
        409, "conflict", "A concurrent request changed the same record; retry the request.", "conflict"
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "Unexpected server error; it has been logged.", "internal")


def install(app: FastAPI) -> None:
    app.add_exception_handler(LoraqError, _loraq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _db_down)
    app.add_exception_handler(IntegrityError, _conflict)
    app.add_exception_handler(Exception, _unexpected)
