"""OpenID Connect single sign-on: a clinic's own identity providers.

A clinic admin configures a provider by its issuer; every endpoint comes from the
issuer's own discovery document (whose `issuer` must be the configured one), so a
provider cannot claim another issuer's identities with keys of its own. The flow is the
authorization code flow with PKCE (authlib's OAuth2 client), `state` and `nonce` kept in
an encrypted, short-lived `__Host-` cookie of the browser that started it; the ID token's
signature (the provider's JWKS), issuer, audience, lifetime and nonce are checked with
joserfc. External identities are linked to users by (issuer, subject), never by e-mail
(ADR 0013). A provider signs users into its own clinic only.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from authlib.common.security import is_secure_transport
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oidc.discovery import OpenIDProviderMetadata
from cryptography.fernet import InvalidToken as FernetInvalid
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._auth import MfaRequired, NotAMember, TokenPair, _membership_for, sign_in
from ._clients import is_reseller_admin
from ._errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PlatformError,
    Unauthenticated,
    Unavailable,
)
from ._passwords import fernet
from ._runtime import Platform
from ._settings import Settings
from ._tables import oidc_identities, oidc_providers, users

FLOW_COOKIE = "__Host-dp_sso"
FLOW_TTL_S = 600
CALLBACK_PATH = "/api/v1/auth/sso/callback"
SCOPE = "openid email profile"
LEEWAY_S = 60
MAX_DOCUMENT_BYTES = 256 * 1024
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric only: `none` and HMAC (keyed with the client secret) are refused."""
_STATE_KEY = "oidc"
_JWKS_RELOAD_S = 10.0


class SsoFailed(Unauthenticated):
    problem = "sso-failed"


class UnknownIdentity(Forbidden):
    problem = "sso-identity-unknown"


@dataclass(frozen=True)
class Provider:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    issuer: str
    client_id: str
    allowed_domains: tuple[str, ...]
    enabled: bool

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "allowed_domains": list(self.allowed_domains),
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class Flow:
    """What the browser's flow cookie carries between start and callback (encrypted)."""

    provider_id: str
    tenant_id: str
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    return_to: str | None = None
    link_user: str | None = None


@dataclass(frozen=True)
class Outcome:
    result: TokenPair | MfaRequired
    return_to: str | None


# Configuration -----------------------------------------------------------------------


def validate_issuer(settings: Settings, issuer: str) -> str:
    """An absolute https URL (plain http only to a loopback address, outside production)."""
    issuer = issuer.strip()
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidInput("the issuer must be an absolute URL such as https://login.example.es")
    secure = parts.scheme == "https" or (
        settings.environment != "production" and is_secure_transport(issuer)
    )
    if not secure:
        raise InvalidInput(
            "the issuer must use https (plain http only to localhost in development)"
        )
    return issuer


def validate_domains(domains: list[str]) -> list[str]:
    cleaned = sorted({d.strip().lower().lstrip("@") for d in domains if d.strip()})
    for domain in cleaned:
        if "." not in domain or not all(c.isalnum() or c in ".-" for c in domain):
            raise InvalidInput(f"'{domain[:80]}' is not an e-mail domain such as example.es")
    return cleaned


def _provider(row: Any) -> Provider:
    return Provider(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        issuer=row.issuer,
        client_id=row.client_id,
        allowed_domains=tuple(row.allowed_domains or ()),
        enabled=row.enabled,
    )


async def add_provider(
    platform: Platform,
    tenant_id: uuid.UUID,
    *,
    name: str,
    issuer: str,
    client_id: str,
    client_secret: str,
    allowed_domains: list[str],
    ctx: AuditContext,
) -> Provider:
    """Configure a provider after reading its discovery document (errors say what is wrong
    now, not at the first sign-in)."""
    issuer = validate_issuer(platform.settings, issuer)
    domains = validate_domains(allowed_domains)
    await discover(platform, issuer, reload=True)
    secret = fernet(platform.settings, "oidc-client-secret").encrypt(client_secret.encode())
    try:
        async with platform.db.engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(oidc_providers)
                    .values(
                        id=uuid.uuid4(),
                        tenant_id=tenant_id,
                        name=name.strip(),
                        issuer=issuer,
                        client_id=client_id,
                        client_secret=secret.decode(),
                        allowed_domains=domains,
                    )
                    .returning(oidc_providers)
                )
            ).one()
            await record(
                conn, ctx, "sso.provider_added", tenant_id=tenant_id, target=issuer, id=str(row.id)
            )
    except IntegrityError:
        raise Conflict(
            "this clinic already has a provider with that issuer and client id"
        ) from None
    return _provider(row)


async def list_providers(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[Provider]:
    rows = await conn.execute(
        select(oidc_providers)
        .where(oidc_providers.c.tenant_id == tenant_id)
        .order_by(oidc_providers.c.created_at)
    )
    return [_provider(r) for r in rows]


async def get_provider(conn: AsyncConnection, provider_id: uuid.UUID, tenant_id: uuid.UUID) -> Any:
    """The enabled provider `provider_id` *of this clinic* (another clinic's is not found)."""
    row = (
        await conn.execute(
            select(oidc_providers).where(
                oidc_providers.c.id == provider_id,
                oidc_providers.c.tenant_id == tenant_id,
                oidc_providers.c.enabled,
            )
        )
    ).first()
    if row is None:
        raise NotFound("this clinic has no such sign-in provider; list them at /api/v1/auth/sso")
    return row


async def provider_tenant(platform: Platform, provider_id: uuid.UUID) -> uuid.UUID:
    async with platform.db.engine.connect() as conn:
        tenant = await conn.scalar(
            select(oidc_providers.c.tenant_id).where(
                oidc_providers.c.id == provider_id, oidc_providers.c.enabled
            )
        )
    if tenant is None:
        raise NotFound("no such sign-in provider")
    assert isinstance(tenant, uuid.UUID)
    return tenant


async def remove_provider(
    platform: Platform, tenant_id: uuid.UUID, provider_id: uuid.UUID, ctx: AuditContext
) -> None:
    """Remove a provider; identities it linked stay (they are the user's, per issuer)."""
    async with platform.db.engine.begin() as conn:
        removed = await conn.scalar(
            delete(oidc_providers)
            .where(oidc_providers.c.id == provider_id, oidc_providers.c.tenant_id == tenant_id)
            .returning(oidc_providers.c.issuer)
        )
        if removed is None:
            raise NotFound("this clinic has no such sign-in provider")
        await record(
            conn,
            ctx,
            "sso.provider_removed",
            tenant_id=tenant_id,
            target=removed,
            id=str(provider_id),
        )


# Discovery and keys ------------------------------------------------------------------


async def _fetch_json(platform: Platform, url: str) -> dict[str, Any]:
    try:
        async with httpx2.AsyncClient(
            timeout=platform.settings.sso_http_timeout_s, follow_redirects=False
        ) as http:
            response = await http.get(url, headers={"accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise Unavailable(f"the identity provider cannot be reached at {url}; retry later") from exc
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise Unavailable(f"the identity provider answered {response.status_code} at {url}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Unavailable(f"the identity provider's document at {url} is not a JSON object")
    return body


def _cache(platform: Platform) -> dict[tuple[str, str], Any]:
    cache: dict[tuple[str, str], Any] = platform.state.setdefault(_STATE_KEY, {})
    return cache


async def discover(platform: Platform, issuer: str, *, reload: bool = False) -> dict[str, Any]:
    """The issuer's discovery document (OpenID Connect Discovery 1.0 §4), cached."""
    cache = _cache(platform)
    cached = cache.get(("discovery", issuer))
    if (
        cached
        and not reload
        and time.monotonic() - cached[0] < platform.settings.sso_discovery_cache_s
    ):
        return dict(cached[1])
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        doc = await _fetch_json(platform, url)
    except Unavailable as exc:
        if not reload:
            raise
        # Configuring: the admin typed the issuer, so this is about their input.
        raise InvalidInput(f"{exc.detail}; check the issuer URL") from exc
    if doc.get("issuer") != issuer:
        raise InvalidInput(
            f"the discovery document at {url} names issuer {str(doc.get('issuer'))[:200]!r}, "
            "not the configured one: configure exactly the issuer it names"
        )
    try:
        OpenIDProviderMetadata(doc).validate()
    except (ValueError, KeyError) as exc:
        raise InvalidInput(f"the discovery document at {url} is not valid: {exc}") from exc
    cache[("discovery", issuer)] = (time.monotonic(), doc)
    return doc


async def _keys(platform: Platform, jwks_uri: str, *, reload: bool = False) -> KeySet:
    cache = _cache(platform)
    cached = cache.get(("jwks", jwks_uri))
    age = time.monotonic() - cached[0] if cached else None
    fresh = age is not None and age < platform.settings.sso_discovery_cache_s
    # A key id we do not know: read the JWKS again, but not more than once per few seconds.
    recent = age is not None and age < _JWKS_RELOAD_S
    if cached and ((not reload and fresh) or (reload and recent)):
        keys: KeySet = cached[1]
        return keys
    try:
        keys = KeySet.import_key_set(await _fetch_json(platform, jwks_uri))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise Unavailable("the identity provider's keys (JWKS) cannot be read") from exc
    cache[("jwks", jwks_uri)] = (time.monotonic(), keys)
    return keys


# The flow ----------------------------------------------------------------------------


def _seal(settings: Settings, flow: Flow) -> str:
    return fernet(settings, "oidc-flow").encrypt(json.dumps(asdict(flow)).encode()).decode()


def _unseal(settings: Settings, sealed: str | None) -> Flow:
    if not sealed:
        raise SsoFailed(
            "this sign-in was not started in this browser, or it expired; start it again"
        )
    try:
        data = fernet(settings, "oidc-flow").decrypt(sealed.encode(), ttl=FLOW_TTL_S)
        return Flow(**json.loads(data))
    except (FernetInvalid, ValueError, TypeError) as exc:
        raise SsoFailed("this sign-in expired or was tampered with; start it again") from exc


def safe_return_to(value: str | None) -> str | None:
    """A path of this site only (no scheme, no host: no open redirect)."""
    if value is None:
        return None
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or len(value) > 2000
        or any(ord(c) < 33 or ord(c) == 127 for c in value)
    ):
        raise InvalidInput("return_to must be a path of this site, such as /agenda")
    return value


async def start(
    platform: Platform,
    provider_id: uuid.UUID,
    tenant_id: uuid.UUID,
    redirect_uri: str,
    *,
    return_to: str | None = None,
    link_user: uuid.UUID | None = None,
) -> tuple[str, str]:
    """The provider's authorization URL and the sealed flow for the browser's cookie."""
    async with platform.db.engine.connect() as conn:
        row = await get_provider(conn, provider_id, tenant_id)
    doc = await discover(platform, row.issuer)
    flow = Flow(
        provider_id=str(row.id),
        tenant_id=str(tenant_id),
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),
        redirect_uri=redirect_uri,
        return_to=safe_return_to(return_to),
        link_user=str(link_user) if link_user else None,
    )
    client = AsyncOAuth2Client(
        client_id=row.client_id,
        scope=SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )
    async with client:
        url, _ = client.create_authorization_url(
            doc["authorization_endpoint"],
            state=flow.state,
            nonce=flow.nonce,
            code_verifier=flow.verifier,
        )
    return str(url), _seal(platform.settings, flow)


async def _exchange(
    platform: Platform, row: Any, doc: dict[str, Any], flow: Flow, code: str
) -> str:
    """Trade the code (and the PKCE verifier) for the ID token at the token endpoint."""
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    try:
        secret = fernet(platform.settings, "oidc-client-secret").decrypt(row.client_secret.encode())
    except FernetInvalid as exc:
        raise Unavailable(
            "this provider's client secret cannot be decrypted with the current "
            "DENTALPIN_SECRET_KEY; the clinic admin must configure the provider again"
        ) from exc
    client = AsyncOAuth2Client(
        client_id=row.client_id,
        client_secret=secret.decode(),
        token_endpoint_auth_method=(
            "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
        ),
        redirect_uri=flow.redirect_uri,
        timeout=platform.settings.sso_http_timeout_s,
        follow_redirects=False,
    )
    try:
        async with client:
            token = await client.fetch_token(
                doc["token_endpoint"],
                grant_type="authorization_code",
                code=code,
                code_verifier=flow.verifier,
            )
    except OAuth2Error as exc:
        raise SsoFailed(f"the identity provider refused the sign-in ({exc.error})") from exc
    except httpx2.HTTPError as exc:
        raise Unavailable("the identity provider cannot be reached; retry later") from exc
    except ValueError as exc:  # not a JSON token response
        raise SsoFailed("the identity provider's token response is not valid") from exc
    id_token = token.get("id_token") if isinstance(token, dict) else None
    if not isinstance(id_token, str):
        raise SsoFailed("the identity provider returned no ID token")
    return id_token


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (compare_digest of str
    raises on it)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _header(token: str) -> dict[str, Any]:
    try:
        segment = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SsoFailed("the ID token is malformed") from exc
    if not isinstance(header, dict):
        raise SsoFailed("the ID token is malformed")
    return header


async def verify_id_token(
    platform: Platform, issuer: str, client_id: str, doc: dict[str, Any], token: str, nonce: str
) -> dict[str, Any]:
    """Signature by a key of the provider's JWKS with an asymmetric algorithm it announces,
    then `iss`, `aud` (and `azp`), `exp`, `iat`, `sub` and our `nonce`."""
    announced = set(doc.get("id_token_signing_alg_values_supported") or ["RS256"])
    alg = _header(token).get("alg")
    if alg not in ID_TOKEN_ALGORITHMS & announced:
        raise SsoFailed(f"ID tokens signed with {str(alg)[:20]!r} are not accepted")
    keys = await _keys(platform, doc["jwks_uri"])
    try:
        try:
            decoded = jwt.decode(token, keys, algorithms=[alg])
        except InvalidKeyIdError:
            decoded = jwt.decode(
                token, await _keys(platform, doc["jwks_uri"], reload=True), algorithms=[alg]
            )
    except (JoseError, ValueError, TypeError) as exc:
        raise SsoFailed("the ID token's signature is not valid") from exc
    claims = decoded.claims
    registry = JWTClaimsRegistry(
        leeway=LEEWAY_S,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    )
    try:
        registry.validate(claims)
    except (JoseError, ValueError, TypeError) as exc:
        raise SsoFailed("the ID token's claims are not valid (issuer or lifetime)") from exc
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise SsoFailed("the ID token was issued for another application (audience)")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SsoFailed("the ID token was issued for another application (azp)")
    if not isinstance(claims.get("nonce"), str) or not _same(claims["nonce"], nonce):
        raise SsoFailed("the ID token does not belong to this sign-in (nonce)")
    if not isinstance(claims.get("sub"), str) or not 0 < len(claims["sub"]) <= 255:
        raise SsoFailed("the ID token's subject is not valid")
    return dict(claims)


def _check_domain(row: Any, claims: dict[str, Any]) -> None:
    """An allow-list of e-mail domains restricts who may sign in; it never identifies."""
    allowed = set(row.allowed_domains or ())
    if not allowed:
        return
    email = claims.get("email")
    domain = email.rsplit("@", 1)[-1].lower() if isinstance(email, str) and "@" in email else None
    if domain not in allowed or claims.get("email_verified") is False:
        raise Forbidden(
            "this provider only signs in verified addresses of " + ", ".join(sorted(allowed))
        )


async def finish(
    platform: Platform,
    sealed: str | None,
    *,
    state: str | None,
    code: str | None,
    error: str | None,
    host_tenant: uuid.UUID | None,
    ctx: AuditContext,
) -> Outcome:
    """The provider sent the browser back: check the flow, trade the code, verify the ID
    token, find the linked user and open a session in the provider's clinic."""
    flow = _unseal(platform.settings, sealed)
    if not state or not _same(state, flow.state):
        raise SsoFailed("the sign-in response does not match this browser's sign-in (state)")
    if error:
        raise SsoFailed(f"the identity provider did not sign you in ({error[:100]})")
    if not code:
        raise SsoFailed("the identity provider sent no authorization code")
    tenant_id = uuid.UUID(flow.tenant_id)
    if host_tenant is not None and host_tenant != tenant_id:
        raise Forbidden("this sign-in was started for another clinic than the one at this host")
    async with platform.db.engine.connect() as conn:
        row = await get_provider(conn, uuid.UUID(flow.provider_id), tenant_id)
    doc = await discover(platform, row.issuer)
    id_token = await _exchange(platform, row, doc, flow, code)
    claims = await verify_id_token(platform, row.issuer, row.client_id, doc, id_token, flow.nonce)
    _check_domain(row, claims)
    result = await _sign_in(platform, row, claims, flow, ctx)
    return Outcome(result, flow.return_to)


async def _sign_in(
    platform: Platform, row: Any, claims: dict[str, Any], flow: Flow, ctx: AuditContext
) -> TokenPair | MfaRequired:
    """Find (or, linking, record) the user of (issuer, subject) and open their session in
    the provider's clinic. Refusals are audited and committed before they are raised."""
    subject, email = claims["sub"], claims.get("email")
    email = email[:320] if isinstance(email, str) else None
    details = {"issuer": row.issuer, "subject": subject, "provider": str(row.id)}
    outcome: TokenPair | MfaRequired | PlatformError
    async with platform.db.engine.begin() as conn:
        key = (oidc_identities.c.issuer == row.issuer) & (oidc_identities.c.subject == subject)
        linked = await conn.scalar(select(oidc_identities.c.user_id).where(key).with_for_update())
        if flow.link_user:
            linked = await _link(conn, row, subject, email, linked, uuid.UUID(flow.link_user), ctx)
        if linked is None:
            await record(
                conn, ctx, "sso.unknown_identity", tenant_id=row.tenant_id, target=email, **details
            )
            outcome = UnknownIdentity(
                "this identity is not linked to an account: sign in with your password and "
                "link it (POST /api/v1/auth/sso/{provider}/link); without an account, ask "
                "the clinic's admin for one"
            )
        else:
            outcome = await _open(platform, conn, row, linked, ctx, details)
            if not _refused(outcome):
                await conn.execute(
                    update(oidc_identities).where(key).values(last_login_at=func.now(), email=email)
                )
    if _refused(outcome):
        assert isinstance(outcome, PlatformError)
        raise outcome
    assert not isinstance(outcome, PlatformError) or isinstance(outcome, MfaRequired)
    return outcome


def _refused(outcome: object) -> bool:
    """A refusal, as opposed to a session or a second-factor challenge (also an error)."""
    return isinstance(outcome, PlatformError) and not isinstance(outcome, MfaRequired)


async def _link(
    conn: AsyncConnection,
    row: Any,
    subject: str,
    email: str | None,
    linked: uuid.UUID | None,
    user_id: uuid.UUID,
    ctx: AuditContext,
) -> uuid.UUID:
    """Record the identity for the member who started a link (nothing kept on refusal)."""
    await _membership_for(conn, user_id, row.tenant_id)  # NotAMember
    if linked is not None and linked != user_id:
        raise Conflict("this identity is already linked to another account")
    if linked is None:
        await conn.execute(
            insert(oidc_identities).values(
                issuer=row.issuer, subject=subject, user_id=user_id, provider_id=row.id, email=email
            )
        )
        await record(
            conn,
            ctx.by(user_id, None),
            "sso.linked",
            tenant_id=row.tenant_id,
            issuer=row.issuer,
            subject=subject,
            provider=str(row.id),
        )
    return user_id


async def _open(
    platform: Platform,
    conn: AsyncConnection,
    row: Any,
    user_id: uuid.UUID,
    ctx: AuditContext,
    details: dict[str, Any],
) -> TokenPair | MfaRequired | PlatformError:
    """A session in the provider's clinic, for a member of it only."""
    user = (await conn.execute(select(users).where(users.c.id == user_id))).one()
    if user.disabled:
        return SsoFailed("this account is disabled")
    try:
        membership = await _membership_for(conn, user.id, row.tenant_id)
    except NotAMember as exc:
        actor = ctx.by(user.id, user.email)
        await record(conn, actor, "sso.refused", tenant_id=row.tenant_id, **details)
        return exc
    return await sign_in(
        platform,
        conn,
        user,
        membership,
        ctx,
        reseller_admin=await is_reseller_admin(conn, user.id),
        method="oidc",
        **details,
    )
