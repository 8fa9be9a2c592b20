"""Sign-in, sessions and the caller's profile: /api/v1/auth/*, /api/v1/me, JWKS."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Form, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform import Principal
from dentalpin.platform._auth import (
    TokenPair,
    change_password,
    complete_mfa,
    confirm_enrolment,
    login,
    logout,
    memberships_of,
    refresh,
    start_enrolment,
    switch,
    tenant_summary,
)
from dentalpin.platform._clients import InvalidClient, UnsupportedGrantType, client_credentials
from dentalpin.platform._errors import Forbidden, Unauthenticated
from dentalpin.platform._http import authenticated, get_platform, get_principal, public
from dentalpin.platform._passwords import check_password_strength
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._roles import installed_modules
from dentalpin.platform._runtime import Platform
from dentalpin.platform._tokens import jwks
from dentalpin.platform._websession import (
    REFRESH_COOKIE,
    check_csrf,
    clear_session_cookies,
    refresh_session_id,
    set_session_cookies,
)

API = "/api/v1"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

router = APIRouter(tags=["auth"])
wellknown_router = APIRouter(tags=["auth"])

PlatformDep = Annotated[Platform, Depends(get_platform)]


async def signed_user(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A signed-in *user*: sessions, passwords and second factors are not for clients."""
    if principal.kind != "user" or principal.user_id is None:
        raise Forbidden("integration clients have no session, password or second factor")
    return principal


Signed = Annotated[Principal, Depends(signed_user)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    tenant: str | None = Field(default=None, max_length=63)
    cookie: bool = False
    """A web session: the tokens go in `__Host-` cookies, the body has the CSRF token."""


class MfaIn(Strict):
    mfa_token: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=16)
    cookie: bool = False


class EnrolIn(Strict):
    mfa_token: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=1024)
    """Needed when enrolling signed in (without the login's mfa_token)."""


class EnrolConfirmIn(Strict):
    mfa_token: str | None = Field(default=None, max_length=200)
    code: str = Field(min_length=1, max_length=16)
    cookie: bool = False


class RefreshIn(Strict):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=200)
    """Without it, the web session's refresh cookie (and its CSRF token in X-CSRF-Token)."""


class SwitchIn(Strict):
    tenant: str = Field(min_length=1, max_length=63)


class PasswordIn(Strict):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


def _tokens(response: Response, body: dict[str, Any]) -> dict[str, Any]:
    response.headers.update(NO_STORE)
    return body


def _issue(response: Response, platform: Platform, pair: TokenPair, cookie: bool) -> dict[str, Any]:
    """The pair in the body (API clients), or in the web session's cookies."""
    if cookie:
        return _tokens(response, set_session_cookies(response, platform.settings, pair))
    return _tokens(response, pair.as_dict())


@wellknown_router.get("/.well-known/jwks.json", dependencies=[public()])
async def jwks_document(platform: PlatformDep, response: Response) -> dict[str, Any]:
    """The public keys that verify access tokens (current and recently retired ones)."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return await jwks(platform)


@router.post(f"{API}/auth/login", dependencies=[public()])
async def login_route(
    body: LoginIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any]:
    """Password sign-in into a clinic. 401 `mfa-required` / `mfa-enrolment-required` carry
    an `mfa_token` for the second step; 429 with Retry-After after repeated failures."""
    pair = await login(platform, body.email, body.password, body.tenant, audit_context(request))
    return _issue(response, platform, pair, body.cookie)


@router.post(f"{API}/auth/mfa", dependencies=[public()])
async def mfa_route(
    body: MfaIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any]:
    """Second step of a sign-in: the TOTP code for the `mfa_token` the login returned."""
    pair = await complete_mfa(platform, body.mfa_token, body.code, audit_context(request))
    return _issue(response, platform, pair, body.cookie)


async def _optional_principal(request: Request, mfa_token: str | None) -> Principal | None:
    if mfa_token:
        return None
    return await signed_user(await get_principal(request))


@router.post(f"{API}/auth/mfa/enrol", dependencies=[public()])
async def enrol_route(
    body: EnrolIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, str]:
    """Start TOTP enrolment: with the login's `mfa_token`, or signed in with the current
    `password`. Returns the secret and an otpauth:// URI (show it as a QR code) once."""
    principal = await _optional_principal(request, body.mfa_token)
    result = await start_enrolment(
        platform,
        principal.user_id if principal else None,
        body.mfa_token,
        audit_context(request),
        body.password,
    )
    response.headers.update(NO_STORE)
    return result


@router.post(f"{API}/auth/mfa/enrol/confirm", dependencies=[public()], response_model=None)
async def enrol_confirm_route(
    body: EnrolConfirmIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any] | Response:
    """Confirm enrolment with a first code; through a login's challenge, this completes the
    login and returns tokens."""
    principal = await _optional_principal(request, body.mfa_token)
    pair = await confirm_enrolment(
        platform,
        principal.user_id if principal else None,
        body.mfa_token,
        body.code,
        audit_context(request),
    )
    if pair is None:
        return Response(status_code=204)
    return _issue(response, platform, pair, body.cookie)


@router.post(f"{API}/auth/refresh", dependencies=[public()])
async def refresh_route(
    body: RefreshIn, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any]:
    """Exchange a refresh token for a new pair; the old refresh token is spent. Presenting a
    spent one revokes the whole session. Without `refresh_token`, the web session's cookie
    is used (and renewed), with its CSRF token in `X-CSRF-Token`."""
    token = body.refresh_token
    if token is None:
        token = request.cookies.get(REFRESH_COOKIE)
        if not token:
            raise Unauthenticated("send a refresh_token, or the web session's cookie")
        check_csrf(request, platform.settings, await refresh_session_id(platform, token))
    pair = await refresh(platform, token, audit_context(request))
    return _issue(response, platform, pair, body.refresh_token is None)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)


@router.post(f"{API}/auth/token", dependencies=[public()])
async def token_route(
    request: Request,
    response: Response,
    platform: PlatformDep,
    grant_type: Annotated[str, Form(max_length=64)],
    client_id: Annotated[str | None, Form(max_length=64)] = None,
    client_secret: Annotated[str | None, Form(max_length=200)] = None,
    scope: Annotated[str | None, Form(max_length=500)] = None,
) -> dict[str, Any]:
    """OAuth2 client credentials (RFC 6749 §4.4), form-encoded; the client authenticates
    with HTTP Basic or `client_id` + `client_secret` in the form."""
    if grant_type != "client_credentials":
        raise UnsupportedGrantType("only grant_type=client_credentials is supported here")
    basic = _basic_credentials(request)
    if basic is not None:
        client_id, client_secret = basic
    if not client_id or not client_secret:
        raise InvalidClient("client authentication is required")
    issued = await client_credentials(
        platform,
        client_id,
        client_secret,
        scope.split() if scope else None,
        audit_context(request),
    )
    return _tokens(response, issued.as_dict())


@router.post(f"{API}/auth/logout", dependencies=[authenticated()], status_code=204)
async def logout_route(principal: Signed, request: Request, platform: PlatformDep) -> Response:
    """End this session: its refresh tokens, and its access tokens on their next use (and
    the web session's cookies)."""
    assert principal.user_id is not None
    await logout(
        platform,
        principal.session_id,
        principal.user_id,
        audit_context(request),
        principal.tenant_uuid,
    )
    response = Response(status_code=204)
    clear_session_cookies(response)
    return response


@router.post(f"{API}/auth/switch", dependencies=[authenticated()])
async def switch_route(
    body: SwitchIn, principal: Signed, request: Request, response: Response, platform: PlatformDep
) -> dict[str, Any]:
    """Tokens for another clinic the caller is a member of."""
    assert principal.user_id is not None
    pair = await switch(
        platform,
        principal.user_id,
        body.tenant,
        principal.mfa,
        audit_context(request),
        principal.tenant_uuid,
    )
    return _tokens(response, pair.as_dict())


@router.post(f"{API}/auth/password", dependencies=[authenticated()], status_code=204)
async def password_route(
    body: PasswordIn, principal: Signed, request: Request, platform: PlatformDep
) -> Response:
    """Change one's own password (every session ends; sign in again). Nobody else can."""
    if principal.user_id is None:
        raise Unauthenticated("only users have passwords")
    check_password_strength(body.new_password)
    await change_password(
        platform,
        principal.user_id,
        body.current_password,
        body.new_password,
        audit_context(request),
    )
    return Response(status_code=204)


@router.get(f"{API}/me", dependencies=[authenticated()])
async def me(
    principal: Annotated[Principal, Depends(get_principal)], platform: PlatformDep
) -> dict[str, Any]:
    """The caller, the clinic of the token, effective permissions, and the navigation of
    the clinic's installed modules that these permissions open."""
    if principal.kind == "client" or principal.user_id is None:
        return {
            "client": {
                "id": principal.subject,
                "name": principal.name,
                "reseller_id": str(principal.reseller_id) if principal.reseller_id else None,
            },
            "tenant": None,
            "scopes": sorted(principal.scopes),
            "permissions": [],
            "navigation": [],
        }
    tenant_id = principal.tenant_uuid
    async with platform.db.engine.connect() as conn:
        installed = await installed_modules(conn, tenant_id) if tenant_id else []
        clinics = [
            {"slug": m.slug, "support": m.support}
            for m in await memberships_of(conn, principal.user_id)
        ]
    navigation = []
    for name in installed:
        if name not in platform.registry:
            continue
        for entry in platform.registry.get(name).manifest.navigation:
            needed = f"{name}.{entry.permission}" if entry.permission else None
            if needed is None or principal.can(needed):
                navigation.append(
                    {
                        "module": name,
                        "label": entry.label,
                        "path": entry.path,
                        "permission": needed,
                        "icon": entry.icon,
                        "order": entry.order,
                    }
                )
    navigation.sort(key=lambda e: (e["order"], e["label"]))
    return {
        "user": {
            "id": str(principal.user_id),
            "email": principal.email,
            "name": principal.name,
            "is_operator": principal.is_operator,
        },
        "tenant": await tenant_summary(platform, tenant_id) if tenant_id else None,
        "roles": sorted(principal.roles),
        "permissions": sorted(principal.permissions),
        "location_ids": list(principal.location_ids),
        "mfa": principal.mfa,
        "support_grant": str(principal.support_grant_id) if principal.support_grant_id else None,
        "navigation": navigation,
        "memberships": clinics,
    }
