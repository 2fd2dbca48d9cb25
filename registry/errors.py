"""Errors a user can cause, each with a stable code.

One exception type per kind; the gateway maps ``kind`` to an HTTP status in
one place (``gateway/errors.py``). Messages say what to do next.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID = "invalid"  # the caller sent something wrong (HTTP 400/422)
    UNAUTHENTICATED = "unauthenticated"  # 401
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409
    TOO_LARGE = "too_large"  # 413
    RATE_LIMITED = "rate_limited"  # 429, with Retry-After
    UNAVAILABLE = "unavailable"  # a dependency is down (503)
    JOB_FAILED = "job_failed"  # the job ran and failed on a worker (502)
    TIMEOUT = "timeout"  # the job did not end in time; it still runs (504)


class LoraqError(Exception):
    """Base of every user-facing error: ``code`` is stable, ``message`` is for humans."""

    kind: ErrorKind = ErrorKind.INVALID
    code: str = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(LoraqError):
    kind = ErrorKind.INVALID
    code = "invalid_request"


class InvalidAdapter(LoraqError):
    """An adapter that cannot be served on this base (see ``registry.artifacts.checks``)."""

    kind = ErrorKind.INVALID
    code = "invalid_adapter"


class Unauthenticated(LoraqError):
    kind = ErrorKind.UNAUTHENTICATED
    code = "invalid_api_key"


class Forbidden(LoraqError):
    kind = ErrorKind.FORBIDDEN
    code = "forbidden"


class NotFound(LoraqError):
    kind = ErrorKind.NOT_FOUND
    code = "not_found"


class Conflict(LoraqError):
    kind = ErrorKind.CONFLICT
    code = "conflict"


class TooLarge(LoraqError):
    kind = ErrorKind.TOO_LARGE
    code = "too_large"


class Unavailable(LoraqError):
    kind = ErrorKind.UNAVAILABLE
    code = "unavailable"


class QuotaExceeded(LoraqError):
    """A tenant over one of its quotas; ``retry_after_s`` is when trying again can succeed."""

    kind = ErrorKind.RATE_LIMITED
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class JobFailed(LoraqError):
    """A synchronous request whose job failed on a worker; ``code`` is the job's error code."""

    kind = ErrorKind.JOB_FAILED
    code = "job_failed"


class JobTimeout(LoraqError):
    kind = ErrorKind.TIMEOUT
    code = "completion_timeout"
