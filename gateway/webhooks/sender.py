"""One delivery attempt over HTTP: the target checked again, signed, short timeouts, no redirects.

A receiver that is slow or never answers costs one attempt's timeout on one
of the dispatcher's sender threads, never a worker's time or another
delivery's: the dispatcher runs attempts concurrently and records each
outcome on its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from gateway.webhooks import signing
from gateway.webhooks.targets import TargetRefused, check_target

MAX_RESPONSE_NOTE = 300  # characters of a receiver's error answer kept on the delivery


@dataclass(frozen=True)
class Attempt:
    """What one attempt got: an HTTP status, or none (``error`` says why)."""

    status: int | None
    error: str | None = None
    error_is_final: bool = False  # the target was refused: trying again cannot help

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def attempt(
    client: httpx.Client,
    *,
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    allow: Sequence[str] = (),
) -> Attempt:
    """Post ``body`` to ``url`` once, signed with ``secret``; never raises for the receiver's faults."""
    try:
        check_target(url, allow=allow)
    except TargetRefused as exc:
        return Attempt(status=None, error=f"{exc.code}: {exc}", error_is_final=True)
    headers = signing.headers(secret, msg_id=msg_id, timestamp=int(time.time()), body=body)
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(status=None, error=f"{type(exc).__name__}: {exc}"[:MAX_RESPONSE_NOTE])
    if 200 <= response.status_code < 300:
        return Attempt(status=response.status_code)
    return Attempt(status=response.status_code, error=response.text[:MAX_RESPONSE_NOTE] or None)


def make_client(*, timeout_s: float) -> httpx.Client:
    """Redirects are not followed (a 3xx is an answer, not a new target past the guard)."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
        follow_redirects=False,
        headers={"user-agent": "loraq-webhooks/1"},
    )
