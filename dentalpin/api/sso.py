"""OpenID Connect single sign-on: the sign-in flow (/api/v1/auth/sso/*) and a clinic's
provider configuration (/api/v1/sso/providers)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from dentalpin.platform import Principal, require_permission
from dentalpin.platform._auth import MfaRequired
from dentalpin.platform._errors import NotFound, Unauthenticated
from dentalpin.platform._http import authenticated, get_platform, get_principal, public
from dentalpin.platform._oidc import (
    CALLBACK_PATH,
    FLOW_COOKIE,
    FLOW_TTL_S,
    add_provider,
    finish,
    list_providers,
    provider_tenant,
    remove_provider,
    start,
)
from dentalpin.platform._request_id import audit_context
from dentalpin.platform._runtime import Platform
from dentalpin.platform._websession import set_session_cookies

from ._platform import clinic_id
from .auth import NO_STORE, signed_user

API = "/api/v1"
SSO = "platform.sso.manage"

router = APIRouter(tags=["single sign-on"])
PlatformDep = Annotated[Platform, Depends(get_platform)]


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    issuer: str = Field(min_length=8, max_length=500)
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str = Field(min_length=1, max_length=2000)
    allowed_domains: list[str] = Field(default_factory=list, max_length=50)
    """E-mail domains a sign-in must come from (empty: any); it never links accounts."""


async def host_tenant(request: Request) -> uuid.UUID | None:
    """The clinic the host names (a stale token or cookie does not matter here)."""
    resolver = request.app.state.tenant_resolver
    with contextlib.suppress(Unauthenticated):
        await resolver(request)
    tenant: uuid.UUID | None = getattr(request.state, "host_tenant_id", None)
    return tenant


async def _provider_here(request: Request, platform: Platform, provider_id: uuid.UUID) -> uuid.UUID:
    """The provider's clinic, which must be the host's when the host names one."""
    tenant = await provider_tenant(platform, provider_id)
    here = await host_tenant(request)
    if here is not None and here != tenant:
        raise NotFound("this clinic has no such sign-in provider")
    return tenant


def _callback_uri(request: Request) -> str:
    return str(request.base_url).rstrip("/") + CALLBACK_PATH


def _flow_cookie(response: Response, sealed: str) -> None:
    # Lax: the provider sends the browser back with a top-level GET, which carries it.
    response.set_cookie(
        FLOW_COOKIE,
        sealed,
        max_age=FLOW_TTL_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )


@router.get(f"{API}/auth/sso", dependencies=[public()])
async def providers_here(request: Request, platform: PlatformDep) -> list[dict[str, str]]:
    """The sign-in providers of the clinic at this host (for its login page)."""
    tenant = await host_tenant(request)
    if tenant is None:
        raise NotFound("call this on a clinic's host name")
    async with platform.db.engine.connect() as conn:
        found = await list_providers(conn, tenant)
    return [{"id": str(p.id), "name": p.name} for p in found if p.enabled]


@router.get(f"{API}/auth/sso/{{provider_id}}/start", dependencies=[public()])
async def sso_start(
    provider_id: uuid.UUID,
    request: Request,
    platform: PlatformDep,
    return_to: Annotated[str | None, Query(max_length=2000)] = None,
) -> RedirectResponse:
    """Send the browser to the provider. With `return_to` (a path of this site), the
    callback opens a cookie web session and redirects there; without, it answers tokens."""
    tenant = await _provider_here(request, platform, provider_id)
    url, sealed = await start(
        platform, provider_id, tenant, _callback_uri(request), return_to=return_to
    )
    response = RedirectResponse(url, status_code=303, headers=NO_STORE)
    _flow_cookie(response, sealed)
    return response


@router.post(f"{API}/auth/sso/{{provider_id}}/link", dependencies=[authenticated()])
async def sso_link(
    provider_id: uuid.UUID,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(signed_user)],
    platform: PlatformDep,
    return_to: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, str]:
    """Link an identity of this clinic's provider to the signed-in account: answers the URL
    to send the browser to (a POST, so that no cross-site page can start a link)."""
    tenant = await _provider_here(request, platform, provider_id)
    if principal.tenant_uuid != tenant:
        raise NotFound("this clinic has no such sign-in provider")
    url, sealed = await start(
        platform,
        provider_id,
        tenant,
        _callback_uri(request),
        return_to=return_to,
        link_user=principal.user_id,
    )
    response.headers.update(NO_STORE)
    _flow_cookie(response, sealed)
    return {"authorization_url": url}


@router.get(CALLBACK_PATH, dependencies=[public()], response_model=None)
async def sso_callback(
    request: Request,
    response: Response,
    platform: PlatformDep,
    state: Annotated[str | None, Query(max_length=200)] = None,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any] | Response:
    """Where the provider sends the browser back. Answers like a password login (tokens,
    or 401 `mfa-required` with an `mfa_token`), or, for a web sign-in, sets the session
    cookies and redirects to its `return_to`."""
    outcome = await finish(
        platform,
        request.cookies.get(FLOW_COOKIE),
        state=state,
        code=code,
        error=error,
        host_tenant=await host_tenant(request),
        ctx=audit_context(request),
    )
    if outcome.return_to is None:
        if isinstance(outcome.result, MfaRequired):
            raise outcome.result
        response.delete_cookie(FLOW_COOKIE, path="/", secure=True, httponly=True)
        response.headers.update(NO_STORE)
        return outcome.result.as_dict()
    if isinstance(outcome.result, MfaRequired):
        # The page finishes with POST /api/v1/auth/mfa {"cookie": true}; a fragment never
        # reaches a server log or a Referer.
        extra = outcome.result.extra
        fragment = urlencode({"mfa": outcome.result.problem, "mfa_token": extra["mfa_token"]})
        redirect = RedirectResponse(f"{outcome.return_to}#{fragment}", 303, headers=NO_STORE)
    else:
        redirect = RedirectResponse(outcome.return_to, 303, headers=NO_STORE)
        set_session_cookies(redirect, platform.settings, outcome.result)
    redirect.delete_cookie(FLOW_COOKIE, path="/", secure=True, httponly=True)
    return redirect


@router.get(f"{API}/sso/providers", dependencies=[require_permission(SSO)])
async def providers(
    principal: Annotated[Principal, Depends(get_principal)], platform: PlatformDep
) -> list[dict[str, Any]]:
    """This clinic's providers (client secrets are never shown again)."""
    async with platform.db.engine.connect() as conn:
        return [p.public() for p in await list_providers(conn, clinic_id(principal))]


@router.post(f"{API}/sso/providers", dependencies=[require_permission(SSO)], status_code=201)
async def create_provider(
    body: ProviderIn,
    principal: Annotated[Principal, Depends(get_principal)],
    request: Request,
    platform: PlatformDep,
) -> dict[str, Any]:
    """Configure a provider by its issuer (its discovery document is read now). Register
    `https://<clinic host>/api/v1/auth/sso/callback` as its redirect URI."""
    provider = await add_provider(
        platform,
        clinic_id(principal),
        name=body.name,
        issuer=body.issuer,
        client_id=body.client_id,
        client_secret=body.client_secret,
        allowed_domains=body.allowed_domains,
        ctx=audit_context(request),
    )
    return provider.public()


@router.delete(
    f"{API}/sso/providers/{{provider_id}}", dependencies=[require_permission(SSO)], status_code=204
)
async def delete_provider(
    provider_id: uuid.UUID,
    principal: Annotated[Principal, Depends(get_principal)],
    request: Request,
    platform: PlatformDep,
) -> Response:
    await remove_provider(platform, clinic_id(principal), provider_id, audit_context(request))
    return Response(status_code=204)
