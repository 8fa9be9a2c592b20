"""ASGI middleware of the platform's HTTP layer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy.exc import DBAPIError

from ._db import is_stale_statement

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)
REPLAYABLE_BODY_BYTES = 1 << 20


class RetryStaleStatements:
    """Re-run a request once when asyncpg refused a cached statement.

    Another process's DDL (a module upgrade on this tenant) can invalidate the
    prepared statements cached on a pooled connection. The failed transaction is
    gone and the dialect has cleared its caches, so the whole request is run again,
    once, with its body replayed — provided no response byte was sent yet and the
    body is small enough to keep.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _declared_length(scope) > REPLAYABLE_BODY_BYTES:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        for attempt in (1, 2):
            try:
                await self.app(scope, _replay(body, receive), tracking_send)
                return
            except DBAPIError as exc:
                if attempt == 2 or started or not is_stale_statement(exc):
                    raise
                log.info("stale cached statement on %s; running the request again", scope["path"])


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return REPLAYABLE_BODY_BYTES + 1
    return 0


async def _read_body(receive: Receive) -> list[Message]:
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        # After the body, further reads wait for the client's disconnect as usual.
        return pending.pop(0) if pending else await receive()

    return replay
