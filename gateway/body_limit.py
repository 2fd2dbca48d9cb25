"""Refuse request bodies above ``LORAQ_MAX_BODY_BYTES``, chunked ones included.

Pure ASGI: a declared ``Content-Length`` above the limit is refused before
reading; otherwise the bytes are counted as they stream in and reading stops
at the limit with :class:`registry.errors.TooLarge` (rendered as 413 JSON).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response
from registry.errors import TooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return f"request body is {size} bytes; the limit is {self.max_bytes} (LORAQ_MAX_BODY_BYTES)."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "request_too_large", self._message(declared.decode()), "too_large")
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self._message(f"more than {self.max_bytes}"), code="request_too_large")
            return message

        await self.app(scope, counted, send)
