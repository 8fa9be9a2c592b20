"""Request ids: every request gets one (the caller's `X-Request-ID` when it is sane, else a
new one), echoed in the response and written to the audit log and the logs."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from ._middleware import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import Request

    from ._audit import AuditContext

HEADER = b"x-request-id"
_SANE = re.compile(rb"^[A-Za-z0-9._:-]{8,128}$")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER), b"")
        request_id = given.decode() if _SANE.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != HEADER]
                message["headers"] = [*headers, (HEADER, request_id.encode())]
            await send(message)

        await self.app(scope, receive, with_header)


def request_id(request: Request) -> str | None:
    value: str | None = getattr(request.state, "request_id", None)
    return value


def audit_context(request: Request) -> AuditContext:
    """The request's id and client address, and its principal when one was resolved."""
    from ._audit import AuditContext

    principal = getattr(request.state, "principal", None)
    return AuditContext(
        request_id=request_id(request),
        ip=request.client.host if request.client else None,
        actor_id=getattr(principal, "user_id", None),
        # A client has no e-mail: its client id names it.
        actor=getattr(principal, "email", None) or getattr(principal, "subject", None),
    )
