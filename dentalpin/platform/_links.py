"""Tokens of the links sent by e-mail (invitations, password reset, e-mail verification).

A token is `<row id>.<expiry>.<nonce>.<signature>`: HMAC-SHA256 under a key derived from
DENTALPIN_SECRET_KEY for the token's purpose, so a token of one purpose is worthless for
another and a tampered or expired one is refused before the database is asked. Its row
stores only the token's SHA-256 and when it was spent or revoked: that makes it single
use and revocable, and a database dump holds no usable link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ._errors import PlatformError
from ._passwords import derived_key, token_hash
from ._settings import Settings

Purpose = Literal["invitation", "password_reset", "email_verification"]
MAX_TOKEN_LENGTH = 200


class InvalidLink(PlatformError):
    status = 400
    problem = "invalid-link"


@dataclass(frozen=True)
class LinkToken:
    row_id: uuid.UUID
    expires_at: datetime
    value: str

    @property
    def stored_hash(self) -> str:
        return token_hash(self.value)


def _signature(settings: Settings, purpose: Purpose, body: str) -> str:
    mac = hmac.new(derived_key(settings, f"link:{purpose}"), body.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def issue(settings: Settings, purpose: Purpose, row_id: uuid.UUID, ttl_s: int) -> LinkToken:
    expires = int(time.time()) + ttl_s
    body = f"{row_id.hex}.{expires}.{secrets.token_urlsafe(24)}"
    value = f"{body}.{_signature(settings, purpose, body)}"
    return LinkToken(row_id, datetime.fromtimestamp(expires, UTC), value)


def read(settings: Settings, purpose: Purpose, value: str, what: str) -> LinkToken:
    """The token's row id, if its signature holds and it has not expired; `what` names the
    link in the error ("invitation", "password-reset link"...)."""
    invalid = InvalidLink(f"this {what} is not valid (mistyped or altered); ask for a new one")
    parts = value.strip().split(".")
    if len(value) > MAX_TOKEN_LENGTH or len(parts) != 4:
        raise invalid
    body = ".".join(parts[:3])
    if not hmac.compare_digest(parts[3], _signature(settings, purpose, body)):
        raise invalid
    try:
        row_id, expires = uuid.UUID(hex=parts[0]), int(parts[1])
    except ValueError:
        raise invalid from None
    if expires <= time.time():
        raise InvalidLink(f"this {what} has expired; ask for a new one")
    return LinkToken(row_id, datetime.fromtimestamp(expires, UTC), value.strip())


def matches(token: LinkToken, stored_hash: str) -> bool:
    return hmac.compare_digest(token.stored_hash, stored_hash)


def clinic_url(settings: Settings, slug: str | None) -> str:
    """The platform's public URL, or a clinic's (its slug before the host)."""
    scheme, _, rest = settings.public_url.rstrip("/").partition("://")
    return f"{scheme}://{slug}.{rest}" if slug else f"{scheme}://{rest}"


def link(settings: Settings, slug: str | None, page: str, token: LinkToken) -> str:
    # In the fragment: browsers do not send it, so it stays out of servers' access logs.
    return f"{clinic_url(settings, slug)}/{page}#token={token.value}"
