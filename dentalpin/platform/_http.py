"""What module routers depend on: the request's tenant, its session, the principal, permissions.

The principal comes from a Bearer access token (an Ed25519-signed JWT, `_tokens.py`).
Its permissions are never read from the token: every request loads the user's membership
in the token's tenant and the permissions its roles hold for the tenant's installed
modules (`_auth.load_principal`). When the host names a clinic too, it must be the
token's clinic (403 otherwise).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, Query, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ._audit import record
from ._auth import load_principal
from ._clients import SCOPES, load_client, resellers_of
from ._db import TenantScope
from ._errors import Forbidden, NotFound, Unauthenticated
from ._members import ClinicMembers
from ._module import TenantRef
from ._request_id import audit_context
from ._rows import parse_if_match
from ._runtime import Platform
from ._tokens import AccessClaims, verify_access_token
from ._websession import ACCESS_COOKIE, check_csrf


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
    support_grant_id: uuid.UUID | None = None
    """Acting through a clinic's support grant (checked on this request), not a membership."""

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
    """The verified claims of the request's access token (None without one); 401 if bad.

    The token comes from `Authorization: Bearer`, else from the web session's cookie (then
    an unsafe method needs the session's CSRF token too: 403 `csrf-failed`)."""
    if hasattr(request.state, "token_claims"):
        cached: AccessClaims | None = request.state.token_claims
        return cached
    token = bearer_token(request)
    from_cookie = token is None and bool(request.cookies.get(ACCESS_COOKIE))
    if from_cookie:
        token = request.cookies[ACCESS_COOKIE]
    claims = None if token is None else await verify_access_token(get_platform(request), token)
    if from_cookie and claims is not None:
        check_csrf(request, get_platform(request).settings, claims.session_id)
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
        support_grant_id=loaded.support_grant_id,
    )
    request.state.principal = principal
    if principal.support_grant_id is not None:
        await _record_support_access(request, principal)
    return principal


async def _record_support_access(request: Request, principal: Principal) -> None:
    """Every request made through a support grant is in the clinic's audit log."""
    async with get_platform(request).db.engine.begin() as conn:
        await record(
            conn,
            audit_context(request),
            "support.access",
            tenant_id=principal.tenant_uuid,
            target=f"{request.method} {request.url.path}",
            grant=str(principal.support_grant_id),
        )


async def get_tenant_session(
    request: Request,
    tenant: Annotated[TenantRef, Depends(get_tenant)],
    platform: Annotated[Platform, Depends(get_platform)],
) -> AsyncIterator[AsyncSession]:
    """One transaction per request, confined to the request's tenant; its last statement
    records the access in the audit log, so the entry exists exactly when the access
    committed (a handler that fails leaves neither)."""
    async with platform.db.tenant(TenantScope(tenant.schema, tenant.role)) as session:
        yield session
        await session.execute(_AUDIT, _access_entry(request, tenant))


_AUDIT = text(
    "select _audit(:tenant, :action, :target, :request_id, :ip, :actor_id, :actor, "
    "cast(:details as jsonb))"
)


def _access_entry(request: Request, tenant: TenantRef) -> dict[str, Any]:
    """`<module>.read` or `<module>.write`, the path as target, the route and its ids."""
    route = getattr(request.scope.get("route"), "path", request.url.path)
    # Module routes are mounted at /api/v1/<module>/ (the route object may be the module's
    # own, with its path relative to that prefix).
    parts = request.url.path.split("/")
    module = parts[3] if len(parts) > 3 and parts[1:3] == ["api", "v1"] else "platform"
    kind = "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"
    ctx = audit_context(request)
    details = {"method": request.method, "route": route, "ids": dict(request.path_params)}
    return {
        "tenant": tenant.id,
        "action": f"{module}.{kind}",
        "target": request.url.path,
        "request_id": ctx.request_id,
        "ip": ctx.ip,
        "actor_id": ctx.actor_id,
        "actor": ctx.actor,
        "details": json.dumps(details, default=str),
    }


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


@dataclass(frozen=True)
class Actor:
    """Who acts on the platform API: an operator, a reseller admin, or an integration
    client of a reseller. Resellers act only on their own tenants."""

    principal: Principal
    role: Literal["operator", "reseller", "client"]
    reseller_ids: frozenset[uuid.UUID] = frozenset()

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def resellers(self) -> frozenset[uuid.UUID] | None:
        """None for an operator (every reseller); else the resellers the actor acts for."""
        return None if self.is_operator else self.reseller_ids

    def sees(self, reseller_id: uuid.UUID | None) -> bool:
        return self.is_operator or (reseller_id is not None and reseller_id in self.reseller_ids)

    @property
    def name(self) -> str:
        return self.principal.email or self.principal.subject


class InsufficientScope(Forbidden):
    problem = "insufficient-scope"


class PlatformAccess:
    """A platform-level route (tenants, resellers, jobs...), on the platform host.

    Operators may call every one; reseller admins and integration clients only those not
    `operator_only`, clients only with `scope` and never `users_only` ones. Users need a
    session that passed the second factor. Which tenants an actor may touch is decided
    by the route, from `Actor.resellers`.
    """

    def __init__(self, scope: str, *, operator_only: bool = False, users_only: bool = False):
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope
        self.operator_only = operator_only
        self.users_only = users_only

    async def __call__(
        self, request: Request, principal: Annotated[Principal, Depends(get_principal)]
    ) -> Actor:
        if getattr(request.state, "host_tenant_id", None) is not None:
            raise NotFound("the platform API is served on the platform host, not a clinic's")
        actor = await self._actor(request, principal)
        if self.operator_only and not actor.is_operator:
            raise Forbidden("only a platform operator may do this")
        if actor.role == "client":
            if self.users_only:
                raise Forbidden("integration clients cannot do this; a reseller admin can")
            if self.scope not in principal.scopes:
                raise InsufficientScope(f"this needs the scope '{self.scope}'")
        elif not principal.mfa:
            raise Forbidden("the platform API needs a session that passed the second factor")
        return actor

    @staticmethod
    async def _actor(request: Request, principal: Principal) -> Actor:
        if principal.kind == "client":
            owned = frozenset({principal.reseller_id}) if principal.reseller_id else frozenset()
            return Actor(principal, "client", owned)
        if principal.is_operator:
            return Actor(principal, "operator")
        assert principal.user_id is not None
        async with get_platform(request).db.engine.connect() as conn:
            owned = await resellers_of(conn, principal.user_id)
        if not owned:
            raise Forbidden(
                "the platform API is for operators, reseller admins and integration clients"
            )
        return Actor(principal, "reseller", owned)

    def __repr__(self) -> str:
        return f"platform_access({self.scope!r})"


Guard = PermissionCheck | PublicRoute | AuthenticatedRoute | PlatformAccess


def route_guards(dependant: Any) -> list[Guard]:
    """The permission checks and public markers anywhere in a route's dependency tree."""
    found: list[Guard] = []
    if isinstance(
        dependant.call, PermissionCheck | PublicRoute | AuthenticatedRoute | PlatformAccess
    ):
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


def platform_access(scope: str, *, operator_only: bool = False, users_only: bool = False) -> Any:
    """Dependency (yielding the `Actor`) for a platform-level route; see `PlatformAccess`."""
    return Depends(PlatformAccess(scope, operator_only=operator_only, users_only=users_only))


def public() -> Any:
    """Dependency for a route that is public on purpose (every route needs this or a permission)."""
    return Depends(PublicRoute())


def get_members(
    tenant: Annotated[TenantRef, Depends(get_tenant)],
    platform: Annotated[Platform, Depends(get_platform)],
) -> ClinicMembers:
    return ClinicMembers(platform, tenant.id)


Tenant = Annotated[TenantRef, Depends(get_tenant)]
TenantDB = Annotated[AsyncSession, Depends(get_tenant_session)]
Members = Annotated[ClinicMembers, Depends(get_members)]
"""The request's clinic's members (`await members.get(user_id)`): modules cannot read them."""
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
