"""Access tokens: Ed25519-signed JWTs with a `kid`, keys kept in `platform.signing_keys`.

The private key is stored encrypted (Fernet, key derived from DENTALPIN_SECRET_KEY), so
every web process of every host signs and verifies with the same keys without shared
files (ADR 0008). Rotation adds a new key and retires the old one; a retired key stays
in the JWKS, and keeps verifying, until the last token it signed has expired.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet, OKPKey
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import Unauthenticated
from ._passwords import fernet
from ._runtime import Platform
from ._tables import signing_keys

ALGORITHM = "Ed25519"
"""RFC 9864's fully specified name for EdDSA over Ed25519 (`EdDSA` is deprecated)."""
AUDIENCE = "dentalpin-api"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
"""RFC 9068: an access token cannot be confused with another JWT the platform signs."""
MAX_TOKEN_LENGTH = 4096
LEEWAY_S = 30
_RELOAD_ON_UNKNOWN_KID_S = 2.0
_STATE_KEY = "signing_keys"
_KEY_LOCK = text("select pg_advisory_xact_lock(hashtext('dentalpin.signing_keys'))")


class InvalidToken(Unauthenticated):
    problem = "invalid-token"


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says (permissions are never in it)."""

    subject: str
    kind: str
    tenant_id: uuid.UUID | None
    session_id: uuid.UUID | None
    mfa: bool
    jti: str
    issued_at: int
    expires_at: int
    scopes: tuple[str, ...] = ()


@dataclass
class KeyRing:
    loaded_at: float
    verify: KeySet
    jwks: list[dict[str, Any]]
    active_kid: str | None
    signing: OKPKey | None = field(default=None, repr=False)


def _fernet(platform: Platform) -> Any:
    return fernet(platform.settings, "signing-keys")


async def create_signing_key(
    conn: AsyncConnection, platform: Platform, *, only_if_none: bool = False
) -> str | None:
    """Add a new active key and retire the previous one(s). Returns the new kid."""
    await conn.execute(_KEY_LOCK)
    if only_if_none:
        existing = await conn.scalar(
            select(signing_keys.c.kid).where(signing_keys.c.retired_at.is_(None)).limit(1)
        )
        if existing is not None:
            return None  # another process created it while this one waited for the lock
    key = OKPKey.generate_key("Ed25519", auto_kid=False)
    kid = f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
    public = {**key.as_dict(private=False), "kid": kid, "alg": ALGORITHM, "use": "sig"}
    private = _fernet(platform).encrypt(key.as_pem(private=True)).decode()
    await conn.execute(
        update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=_now())
    )
    await conn.execute(
        insert(signing_keys).values(
            kid=kid, algorithm=ALGORITHM, public_jwk=public, private_key=private
        )
    )
    return kid


def _now() -> Any:
    return text("now()")


async def rotate_keys(platform: Platform) -> str:
    async with platform.db.engine.begin() as conn:
        kid = await create_signing_key(conn, platform)
    platform.state.pop(_STATE_KEY, None)
    assert kid is not None
    return kid


async def list_keys(platform: Platform) -> list[dict[str, Any]]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(
                signing_keys.c.kid,
                signing_keys.c.algorithm,
                signing_keys.c.created_at,
                signing_keys.c.retired_at,
            ).order_by(signing_keys.c.created_at)
        )
        return [dict(r._mapping) for r in rows]


async def keyring(platform: Platform, *, reload: bool = False) -> KeyRing:
    """This process's copy of the keys, read again every `signing_key_cache_s` seconds."""
    ring: KeyRing | None = platform.state.get(_STATE_KEY)
    age = time.monotonic() - ring.loaded_at if ring else None
    if (
        ring is not None
        and age is not None
        and not reload
        and (age < platform.settings.signing_key_cache_s)
    ):
        return ring
    if ring is not None and reload and age is not None and age < _RELOAD_ON_UNKNOWN_KID_S:
        return ring
    ring = await _load(platform)
    platform.state[_STATE_KEY] = ring
    return ring


async def _load(platform: Platform) -> KeyRing:
    # A key retired now still verifies the tokens it signed until they expire.
    grace = platform.settings.access_token_ttl_s + LEEWAY_S
    query = text(
        "select kid, public_jwk, private_key, retired_at from platform.signing_keys"
        " where retired_at is null or retired_at > now() - make_interval(secs => :grace)"
        " order by created_at"
    )
    async with platform.db.engine.connect() as conn:
        rows = list(await conn.execute(query, {"grace": grace}))
    active = [r for r in rows if r.retired_at is None]
    if not active:
        async with platform.db.engine.begin() as conn:
            await create_signing_key(conn, platform, only_if_none=True)
            rows = list(await conn.execute(query, {"grace": grace}))
        active = [r for r in rows if r.retired_at is None]
    current = active[-1]
    try:
        pem = _fernet(platform).decrypt(current.private_key.encode())
    except Exception as exc:
        raise RuntimeError(
            "the active signing key cannot be decrypted with this DENTALPIN_SECRET_KEY; "
            "restore the key or run `dentalpin keys rotate`"
        ) from exc
    signing = OKPKey.import_key(pem, {"kid": current.kid, "alg": ALGORITHM})
    publics = [OKPKey.import_key(dict(r.public_jwk)) for r in rows]
    return KeyRing(
        loaded_at=time.monotonic(),
        verify=KeySet(publics),  # type: ignore[arg-type]
        jwks=[dict(r.public_jwk) for r in rows],
        active_kid=current.kid,
        signing=signing,
    )


async def jwks(platform: Platform) -> dict[str, Any]:
    return {"keys": (await keyring(platform)).jwks}


async def sign_access_token(
    platform: Platform,
    *,
    subject: str,
    kind: str,
    tenant_id: uuid.UUID | None,
    session_id: uuid.UUID | None,
    mfa: bool,
    scopes: tuple[str, ...] = (),
) -> tuple[str, int]:
    ring = await keyring(platform)
    assert ring.signing is not None
    assert ring.active_kid is not None
    now = int(time.time())
    ttl = platform.settings.access_token_ttl_s
    claims: dict[str, Any] = {
        "iss": platform.settings.token_issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "kind": kind,
        "tenant": str(tenant_id) if tenant_id else None,
        "sid": str(session_id) if session_id else None,
        "amr": ["pwd", "otp"] if mfa else ["pwd"],
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(12),
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    header = {"alg": ALGORITHM, "kid": ring.active_kid, "typ": TOKEN_TYPE}
    return jwt.encode(header, claims, ring.signing, algorithms=[ALGORITHM]), ttl


def _header(token: str) -> dict[str, Any]:
    try:
        segment = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken("the access token is malformed") from exc
    if not isinstance(header, dict):
        raise InvalidToken("the access token is malformed")
    return header


async def verify_access_token(platform: Platform, token: str) -> AccessClaims:
    """Verify signature, algorithm, key id, type, issuer, audience and lifetime."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise InvalidToken("the access token is malformed")
    header = _header(token)
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"access tokens must be signed with {ALGORITHM}")
    if header.get("typ") != TOKEN_TYPE or not isinstance(header.get("kid"), str):
        raise InvalidToken("not an access token of this platform")
    ring = await keyring(platform)
    if header["kid"] not in {k.get("kid") for k in ring.jwks}:
        ring = await keyring(platform, reload=True)  # rotated by another process?
    try:
        decoded = jwt.decode(token, ring.verify, algorithms=[ALGORITHM])
    except InvalidKeyIdError as exc:
        raise InvalidToken("the access token was signed by an unknown key") from exc
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken("the access token signature is not valid") from exc
    registry = JWTClaimsRegistry(
        leeway=LEEWAY_S,
        iss={"essential": True, "value": platform.settings.token_issuer},
        aud={"essential": True, "value": AUDIENCE},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    claims = decoded.claims
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise InvalidToken("the access token has expired; refresh it") from exc
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken("the access token's claims are not valid") from exc
    if claims.get("kind") not in ("user", "client"):
        raise InvalidToken("the access token's claims are not valid")
    try:
        tenant = uuid.UUID(claims["tenant"]) if claims.get("tenant") else None
        session = uuid.UUID(claims["sid"]) if claims.get("sid") else None
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidToken("the access token's claims are not valid") from exc
    scope = claims.get("scope")
    return AccessClaims(
        subject=str(claims["sub"]),
        kind=str(claims["kind"]),
        tenant_id=tenant,
        session_id=session,
        mfa="otp" in (claims.get("amr") or ()),
        jti=str(claims["jti"]),
        issued_at=int(claims["iat"]),
        expires_at=int(claims["exp"]),
        scopes=tuple(scope.split()) if isinstance(scope, str) else (),
    )


def refresh_expiry(platform: Platform) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=platform.settings.refresh_token_ttl_s)
