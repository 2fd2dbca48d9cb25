"""Refuse request bodies above ``LORAQ_MAX_BODY_BYTES``, chunked ones included.

Uploads under ``/v1/files`` have their own, larger limit
(``LORAQ_MAX_FILE_BYTES``). Pure ASGI: a declared ``Content-Length`` above the limit is refused before
reading; otherwise the bytes are counted as they stream in and reading stops
at the limit with a 413 JSON answer.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_paths: tuple[str, ...] = (), max_upload_bytes: int = 0):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_paths = upload_paths
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path", "") in self.upload_paths
        limit = self.max_upload_bytes if upload else self.max_bytes
        setting = "LORAQ_MAX_FILE_BYTES" if upload else "LORAQ_MAX_BODY_BYTES"

        def explain(size: str) -> str:
            return f"request body is {size} bytes; the limit is {limit} ({setting})."

        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, "request_too_large", explain(declared.decode()), "too_large")
            await response(scope, receive, send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer 413 now and tell the app the client went away; whatever
                    # the app answers to that is dropped by ``guarded`` below.
                    refused = True
                    message_text = explain(f"more than {limit}")
                    await error_response(413, "request_too_large", message_text, "too_large")(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)
