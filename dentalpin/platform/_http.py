"""What module routers depend on: the request's tenant, its session, the principal, permissions.

The principal comes from a Bearer access token (an Ed25519-signed JWT, `_tokens.py`).
Its permissions are never read from the token: every request loads the user's membership
in the token's tenant and the permissions its roles hold for the tenant's installed
modules (`_auth.load_principal`). When the host names a clinic too, it must be the
token's clinic (403 otherwise).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from ._auth import load_principal
from ._clients import load_client
from ._db import TenantScope
from ._errors import Forbidden, NotFound, Unauthenticated
from ._module import TenantRef
from ._rows import parse_if_match
from ._runtime import Platform
from ._tokens import AccessClaims, verify_access_token


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or an integration client, with their effective permissions
    (read from the database for this request, never from the token)."""

    subject: str
    tenant_id: str | None
    permissions: frozenset[str] = field(default_factory=frozenset)
    kind: Literal["user", "client"] = "user"
    user_id: uuid.UUID | None = None
    email: str | None = None
    name: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)
    is_operator: bool = False
    mfa: bool = False
    """The session passed a second factor."""
    session_id: uuid.UUID | None = None
    location_ids: tuple[str, ...] = ()
    """Empty: every location of the tenant."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """OAuth2 scopes of an integration client (kind `client`); users have none."""
    reseller_id: uuid.UUID | None = None

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def tenant_uuid(self) -> uuid.UUID | None:
        return uuid.UUID(self.tenant_id) if self.tenant_id else None


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def get_tenant(request: Request) -> TenantRef:
    tenant: TenantRef | None = getattr(request.state, "tenant", None)
    if tenant is None:
        resolver = getattr(request.app.state, "tenant_resolver", None)
        if resolver is not None:
            await resolver(request)
            tenant = getattr(request.state, "tenant", None)
    if tenant is None:
        raise NotFound("this route needs a clinic: call it on the clinic's host name")
    return tenant


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use 'Authorization: Bearer <access token>'")
    return token.strip()


async def bearer_claims(request: Request) -> AccessClaims | None:
    """The verified claims of the request's access token (None without one); 401 if bad."""
    if hasattr(request.state, "token_claims"):
        cached: AccessClaims | None = request.state.token_claims
        return cached
    token = bearer_token(request)
    claims = None if token is None else await verify_access_token(get_platform(request), token)
    request.state.token_claims = claims
    return claims


async def get_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    claims = await bearer_claims(request)
    if claims is None:
        raise Unauthenticated("authentication required")
    resolver = getattr(request.app.state, "tenant_resolver", None)
    if resolver is not None and not hasattr(request.state, "host_tenant_id"):
        await resolver(request)
    host_tenant: uuid.UUID | None = getattr(request.state, "host_tenant_id", None)
    if host_tenant is not None and claims.tenant_id != host_tenant:
        raise Forbidden("this token was issued for another clinic than the one at this host")
    if claims.kind == "client":
        client = await load_client(get_platform(request), claims)
        principal = Principal(
            subject=client.client_id,
            tenant_id=None,
            kind="client",
            name=client.name,
            scopes=client.scopes,
            reseller_id=client.reseller_id,
        )
        request.state.principal = principal
        return principal
    loaded = await load_principal(get_platform(request), claims)
    principal = Principal(
        subject=claims.subject,
        tenant_id=str(loaded.tenant_id) if loaded.tenant_id else None,
        permissions=loaded.permissions,
        kind="user",
        user_id=loaded.user_id,
        email=loaded.email,
        name=loaded.name,
        roles=loaded.roles,
        is_operator=loaded.is_operator,
        mfa=claims.mfa,
        session_id=claims.session_id,
        location_ids=loaded.location_ids,
    )
    request.state.principal = principal
    return principal


async def get_tenant_session(
    tenant: Annotated[TenantRef, Depends(get_tenant)],
    platform: Annotated[Platform, Depends(get_platform)],
) -> AsyncIterator[AsyncSession]:
    """One transaction per request, confined to the request's tenant."""
    async with platform.db.tenant(TenantScope(tenant.schema, tenant.role)) as session:
        yield session


class PermissionCheck:
    """A route dependency that requires one fully qualified permission."""

    def __init__(self, permission: str) -> None:
        self.permission = permission

    async def __call__(self, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.can(self.permission):
            raise Forbidden(f"permission '{self.permission}' is required")
        return principal

    def __repr__(self) -> str:
        return f"require_permission({self.permission!r})"


class PublicRoute:
    """Marks a route as deliberately reachable without authentication."""

    async def __call__(self) -> None:
        return None


class AuthenticatedRoute:
    """Any signed-in principal, whatever its permissions (its own profile, logout...)."""

    async def __call__(self, principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        return principal

    def __repr__(self) -> str:
        return "authenticated()"


Guard = PermissionCheck | PublicRoute | AuthenticatedRoute


def route_guards(dependant: Any) -> list[Guard]:
    """The permission checks and public markers anywhere in a route's dependency tree."""
    found: list[Guard] = []
    if isinstance(dependant.call, PermissionCheck | PublicRoute | AuthenticatedRoute):
        found.append(dependant.call)
    for sub in dependant.dependencies:
        found += route_guards(sub)
    return found


def require_permission(permission: str) -> Any:
    """Dependency for a route that needs `permission` (`<module>.<resource>.<action>`)."""
    return Depends(PermissionCheck(permission))


def authenticated() -> Any:
    """Dependency for a platform route open to any signed-in principal (not for modules:
    the contract wants module routes to name a permission)."""
    return Depends(AuthenticatedRoute())


def public() -> Any:
    """Dependency for a route that is public on purpose (every route needs this or a permission)."""
    return Depends(PublicRoute())


Tenant = Annotated[TenantRef, Depends(get_tenant)]
TenantDB = Annotated[AsyncSession, Depends(get_tenant_session)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def _if_match(if_match: Annotated[str | None, Header(alias="If-Match")] = None) -> int:
    return parse_if_match(if_match)


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def _page_params(
    limit: Annotated[int, Query(ge=1, le=200, description="Rows per page")] = 50,
    offset: Annotated[int, Query(ge=0, description="Rows to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


IfMatch = Annotated[int, Depends(_if_match)]
"""The row version a PATCH/PUT expects (`If-Match: "<version>"`); 428 when it is missing."""
Paging = Annotated[PageParams, Depends(_page_params)]
"""`limit` (1-200, default 50) and `offset` query parameters of a list route."""
