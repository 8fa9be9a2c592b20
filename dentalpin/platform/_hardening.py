"""Browser-facing hardening of every response: security headers and CORS from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._middleware import ASGIApp, Message, Receive, Scope, Send
from ._settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The API serves JSON only: nothing in a response may load, run or frame anything."""
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""The interactive API docs (Swagger UI from its CDN, with an inline bootstrap script)."""
DOCS_PATHS = ("/api/docs", "/api/redoc")
CORS_HEADERS = ["authorization", "content-type", "x-csrf-token", "x-request-id"]


class SecurityHeaders:
    """Add the security headers to every response, errors included (a route's own header
    of the same name wins)."""

    def __init__(self, app: ASGIApp, hsts_max_age_s: int) -> None:
        self.app = app
        self.hsts = (
            f"max-age={hsts_max_age_s}; includeSubDomains".encode() if hsts_max_age_s else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self._headers(scope)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in added if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        path = str(scope.get("path", ""))
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else API_CSP
        headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", csp.encode()),
            # no-referrer: a callback URL's code or a page's path never leaves with a link.
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        # Only over HTTPS (RFC 6797 §7.2); behind a proxy, uvicorn's --proxy-headers sets it.
        if self.hsts and scope.get("scheme") == "https":
            headers.append((b"strict-transport-security", self.hsts))
        return headers


def install_hardening(app: FastAPI, settings: Settings) -> None:
    """CORS only for the configured origins (none by default), then the security headers,
    outermost so that they are on every response."""
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_HEADERS,
            expose_headers=["x-request-id", "retry-after", "location"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders, hsts_max_age_s=settings.hsts_max_age_s)
