"""What module routers depend on: the request's tenant, its session, the principal, permissions.

Authentication arrives with the identity issue. Until then every non-public route
answers 401: the default is to deny, and each route already says which permission
it needs, so enforcement can be switched on without touching a module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from ._db import TenantScope
from ._errors import NotFound, PlatformError
from ._module import TenantRef
from ._runtime import Platform


class Unauthenticated(PlatformError):
    status = 401
    problem = "unauthenticated"


class Forbidden(PlatformError):
    status = 403
    problem = "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or an integration client, with their effective permissions."""

    subject: str
    tenant_id: str | None
    permissions: frozenset[str] = field(default_factory=frozenset)

    def can(self, permission: str) -> bool:
        return permission in self.permissions


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


async def get_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthenticated("authentication required")
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


def route_guards(dependant: Any) -> list[PermissionCheck | PublicRoute]:
    """The permission checks and public markers anywhere in a route's dependency tree."""
    found: list[PermissionCheck | PublicRoute] = []
    if isinstance(dependant.call, PermissionCheck | PublicRoute):
        found.append(dependant.call)
    for sub in dependant.dependencies:
        found += route_guards(sub)
    return found


def require_permission(permission: str) -> Any:
    """Dependency for a route that needs `permission` (`<module>.<resource>.<action>`)."""
    return Depends(PermissionCheck(permission))


def public() -> Any:
    """Dependency for a route that is public on purpose (every route needs this or a permission)."""
    return Depends(PublicRoute())


Tenant = Annotated[TenantRef, Depends(get_tenant)]
TenantDB = Annotated[AsyncSession, Depends(get_tenant_session)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
