"""The browser's session: `__Host-` cookies carrying the tokens, and CSRF protection.

A web session holds the same access and refresh tokens as an API session, in cookies the
page's scripts cannot read (HttpOnly) and that only this exact host receives (`__Host-`:
Secure, no Domain, Path=/, so a sibling clinic's host cannot set or overwrite them).
A request authenticated by cookie and using an unsafe method must also send the session's
CSRF token in `X-CSRF-Token`: an HMAC of the session id (the signed double-submit pattern),
readable by the page from the `__Host-dp_csrf` cookie or the sign-in's response. Requests
with `Authorization: Bearer` are not affected: a cross-site page cannot set that header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ._errors import Forbidden
from ._passwords import derived_key, token_hash
from ._runtime import Platform
from ._settings import Settings
from ._tables import refresh_tokens

if TYPE_CHECKING:
    from fastapi import Request, Response

    from ._auth import TokenPair

ACCESS_COOKIE = "__Host-dp_access"
REFRESH_COOKIE = "__Host-dp_refresh"
CSRF_COOKIE = "__Host-dp_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class CsrfFailed(Forbidden):
    problem = "csrf-failed"


def csrf_token(settings: Settings, session_id: uuid.UUID) -> str:
    mac = hmac.new(derived_key(settings, "csrf"), session_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_csrf(request: Request, settings: Settings, session_id: uuid.UUID | None) -> None:
    """Refuse an unsafe cookie-authenticated request without this session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    given = request.headers.get(CSRF_HEADER, "")
    if session_id is None or not hmac.compare_digest(
        given.encode(), csrf_token(settings, session_id).encode()
    ):
        raise CsrfFailed(
            "this request is authenticated by the session cookie: send the session's CSRF "
            "token (cookie __Host-dp_csrf) in the X-CSRF-Token header"
        )


def _cookie(response: Response, name: str, value: str, max_age: int, http_only: bool) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=http_only,
        samesite="lax",
    )


def set_session_cookies(response: Response, settings: Settings, pair: TokenPair) -> dict[str, Any]:
    """Put the pair in cookies; the body the page gets has no token, only the CSRF token."""
    assert pair.session_id is not None
    csrf = csrf_token(settings, pair.session_id)
    _cookie(response, ACCESS_COOKIE, pair.access_token, pair.expires_in, http_only=True)
    _cookie(response, REFRESH_COOKIE, pair.refresh_token, settings.refresh_token_ttl_s, True)
    _cookie(response, CSRF_COOKIE, csrf, settings.refresh_token_ttl_s, http_only=False)
    body: dict[str, Any] = {
        "token_type": "cookie",
        "expires_in": pair.expires_in,
        "csrf_token": csrf,
    }
    if pair.tenant:
        body["tenant"] = pair.tenant
    return body


def clear_session_cookies(response: Response) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", secure=True, httponly=name != CSRF_COOKIE)


async def refresh_session_id(platform: Platform, token: str) -> uuid.UUID | None:
    """The session (family) a refresh token belongs to, to check a cookie refresh's CSRF."""
    async with platform.db.engine.connect() as conn:
        family = await conn.scalar(
            select(refresh_tokens.c.family_id).where(
                refresh_tokens.c.token_hash == token_hash(token[:200])
            )
        )
    return family if isinstance(family, uuid.UUID) else None
