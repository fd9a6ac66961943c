"""ASGI middleware: a hard limit on request body size, and security headers (on every
response, a crash's 500 included).

The body limit acts before any form parsing: a declared Content-Length over the limit is
refused at once, and a body that grows past it while streaming (no or a lying
Content-Length) is cut off. Either way the client gets a 413 page saying what the limit is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]


def human_bytes(n: int) -> str:
    """1536 -> '1.5 kB', 52428800 -> '50 MB' (binary multiples, as upload limits are)."""
    for unit, size in (("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def too_large_message(limit: int) -> str:
    return (f"The upload is too large: one request may send at most {human_bytes(limit)} in "
            "all. Send fewer or smaller photos.")


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive`` when the streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 render: Callable[[str], bytes] | None = None,
                 media_type: bytes = b"text/html; charset=utf-8") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.render = render or _plain_page
        self.media_type = media_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = True  # a malformed length is refused rather than trusted
            if too_big:
                await _send_413(send, self.render(too_large_message(self.max_bytes)), self.media_type)
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_413(send, self.render(too_large_message(self.max_bytes)), self.media_type)


def _plain_page(message: str) -> bytes:
    return (f"<!doctype html><title>Upload too large</title><h1>Upload too large</h1>"
            f"<p>{message}</p>").encode()


async def _send_413(send: Send, body: bytes, media_type: bytes = b"text/html; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", media_type),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Add the security headers above to every response, and answer an unhandled error
    itself (a 500 page with the same headers, the error logged) so that no response, not
    even a crash, goes out without them. Outermost of the app's own middleware."""

    def __init__(self, app: ASGIApp, render_error: Callable[[], bytes] | None = None) -> None:
        self.app = app
        self.render_error = render_error or _plain_error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in names)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:  # half a response is out: nothing better to do than drop it
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            try:
                body = self.render_error()
            except Exception:  # the error page itself failed (e.g. the templates)
                body = _plain_error_page()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close"), *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": body})


def _plain_error_page() -> bytes:
    return (b"<!doctype html><title>Something went wrong</title><h1>Something went wrong</h1>"
            b"<p>The server could not answer this request. It has been logged; try again, "
            b"and tell the administrator if it happens again.</p>")
