"""The HTTP application: health endpoints, tenant routing by host, module routers.

Routers of every available module are mounted once, at `/api/v1/<module>/`. A
request reaches a module's route only when the host's tenant has that module
installed (404 otherwise, 409 while it is being uninstalled, 503 while the
tenant's schema is older than the module's code can use).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from dentalpin import __version__
from dentalpin.api import include_routers
from dentalpin.platform import Conflict, Forbidden, NotFound, TenantRef
from dentalpin.platform._db import TenantScope
from dentalpin.platform._errors import Unavailable
from dentalpin.platform._hardening import install_hardening
from dentalpin.platform._http import bearer_claims, public, route_guards
from dentalpin.platform._middleware import RetryStaleStatements
from dentalpin.platform._problems import install_problem_handlers
from dentalpin.platform._request_id import RequestId
from dentalpin.platform._runtime import Platform
from dentalpin.platform._settings import get_settings
from dentalpin.tenants import lineages
from dentalpin.tenants._fleet import MIGRATIONS_DIR, alembic_config

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")

_RESOLVE = text(
    """
    select t.id, t.slug, t.name, t.schema_name, t.db_role,
           coalesce(jsonb_object_agg(tm.module, jsonb_build_array(tm.state, tm.revision))
                    filter (where tm.module is not null), '{}'::jsonb) as modules
      from platform.tenants t
      left join platform.tenant_modules tm on tm.tenant_id = t.id
     where t.status = 'active'
       and (t.slug = :slug
            or t.id = (select d.tenant_id from platform.domains d
                        where d.hostname = :host and d.verified)
            or t.id = :tenant_id)
     group by t.id
     limit 1
    """
).bindparams(bindparam("tenant_id", type_=UUID(as_uuid=True)))


@dataclass
class ResolvedTenant:
    ref: TenantRef
    modules: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def host_of(request: Request) -> str:
    return (request.headers.get("host") or "").split(":", 1)[0].strip().lower().rstrip(".")


async def resolve_tenant(request: Request) -> ResolvedTenant | None:
    """The request's tenant: the one its host names (`<slug>.<base domain>` or a verified
    domain), else the one its access token names (API clients on the bare API host).

    `request.state.host_tenant_id` records the host's tenant (None when the host names
    none), so `get_principal` can refuse a token of another clinic.
    """
    cached: ResolvedTenant | None = getattr(request.state, "resolved_tenant", None)
    if cached is not None:
        return cached
    platform: Platform = request.app.state.platform
    host = host_of(request)
    slug: str | None = None
    if _HOSTNAME.fullmatch(host):  # else not a host name (NUL bytes, spaces...): no clinic
        suffix = "." + platform.settings.base_domain
        slug = host[: -len(suffix)] if host.endswith(suffix) else None
        row = await _lookup(platform, {"slug": slug, "host": host, "tenant_id": None})
    else:
        row = None
    request.state.host_tenant_id = row.id if row is not None else None
    if row is None:
        claims = await bearer_claims(request)  # 401 for a bad token
        if claims is None or claims.tenant_id is None:
            return None
        row = await _lookup(platform, {"slug": None, "host": None, "tenant_id": claims.tenant_id})
        if row is None:
            return None
    resolved = ResolvedTenant(
        TenantRef(row.id, row.slug, row.name, row.schema_name, row.db_role),
        {name: (value[0], value[1]) for name, value in row.modules.items()},
    )
    request.state.resolved_tenant = resolved
    request.state.tenant = resolved.ref
    return resolved


async def _lookup(platform: Platform, params: dict[str, Any]) -> Any:
    try:
        async with platform.db.engine.connect() as conn:
            return (await conn.execute(_RESOLVE, params)).first()
    except (OSError, OperationalError, InterfaceError) as exc:
        raise Unavailable("the clinic directory cannot be reached; retry shortly") from exc
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise Unavailable("the clinic directory cannot be reached; retry shortly") from exc


def module_gate(
    name: str, undeclared: frozenset[Callable[..., Any]] = frozenset()
) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """Let a request into module `name`'s routes only if its tenant can use the module.

    `undeclared` holds the endpoints of routes that declare neither a permission nor
    `public()`: they are refused (403) rather than served without any check.
    """

    async def gate(request: Request) -> None:
        route = request.scope.get("route")
        if getattr(route, "endpoint", None) in undeclared:
            raise Forbidden(
                f"this route of module '{name}' declares no permission; it stays closed until "
                "it declares require_permission(...) or public()"
            )
        resolved = await resolve_tenant(request)
        if resolved is None:
            raise NotFound(f"no clinic is served at host '{host_of(request)}'")
        state, revision = resolved.modules.get(name, ("absent", None))
        if state in ("absent", "uninstalled"):
            raise NotFound(f"module '{name}' is not installed for this clinic")
        if state in ("uninstalling", "installing"):
            raise Conflict(f"module '{name}' is being {state[:-3]}ed for this clinic; retry later")
        if state != "installed" or not _schema_usable(request.app.state.platform, name, revision):
            raise Unavailable(
                f"module '{name}' is waiting for this clinic's database upgrade; retry shortly"
            )

    return gate


def _schema_usable(platform: Platform, name: str, revision: str | None) -> bool:
    """True when the tenant's revision is at or after the one the module's code needs."""
    cache: dict[tuple[str, str | None], bool] = platform.state.setdefault("schema_usable", {})
    key = (name, revision)
    if key not in cache:
        lineage = lineages(platform.registry, platform.state)[name]
        needed = platform.registry.get(name).module.compatible_revision or lineage.head
        cache[key] = (
            needed is None or revision == needed or lineage.is_at_or_after(revision, needed)
        )
    return cache[key]


def create_app(platform: Platform | None = None) -> FastAPI:
    """Build the ASGI application; without a platform, one is created from the environment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = platform is None
        app.state.platform = platform or Platform.create()
        app.state.tenant_resolver = resolve_tenant
        for q in app.state.platform.registry.quarantined.values():
            log.warning("module %s is quarantined and not served: %s", q.name, q.reason)
        yield
        if owned:
            await app.state.platform.close()

    app = FastAPI(
        title="DentalPin",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    install_problem_handlers(app)
    app.add_middleware(RetryStaleStatements)
    app.add_middleware(RequestId)  # retried requests keep their id
    install_hardening(app, platform.settings if platform is not None else get_settings())
    app.include_router(_health_router())
    include_routers(app)
    registry = platform.registry if platform is not None else None
    _mount_modules(app, registry)
    if platform is not None:
        app.state.platform = platform
        app.state.tenant_resolver = resolve_tenant
    return app


def _mount_modules(app: FastAPI, registry: Any) -> None:
    from dentalpin.platform import Registry

    registry = registry or Registry.discover()
    for spec in registry:
        router = spec.module.router()
        if router is None:
            continue
        undeclared = frozenset(
            route.endpoint
            for route in router.routes
            if isinstance(route, APIRoute) and not route_guards(route.dependant)
        )
        for endpoint in undeclared:
            log.error(
                "module %s: route %s declares no permission and is closed (403)",
                spec.name,
                getattr(endpoint, "__name__", endpoint),
            )
        app.include_router(
            router,
            prefix=f"{API_PREFIX}/{spec.name}",
            tags=[spec.name],
            dependencies=[Depends(module_gate(spec.name, undeclared))],
        )


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", dependencies=[public()])
    async def healthz() -> dict[str, str]:
        """The process is alive (no dependency is checked)."""
        return {"status": "ok", "version": __version__}

    @router.get(f"{API_PREFIX}/", dependencies=[public()])
    async def index(request: Request) -> dict[str, Any]:
        """Which clinic this host serves and which of its modules answer here."""
        platform: Platform = request.app.state.platform
        resolved = await resolve_tenant(request)
        body: dict[str, Any] = {"platform": "DentalPin", "version": __version__}
        if resolved is None:
            return body
        installed = sorted(n for n, (state, _) in resolved.modules.items() if state == "installed")
        return body | {
            "clinic": {"slug": resolved.ref.slug, "name": resolved.ref.name},
            "modules": [
                {"name": n, "api": f"{API_PREFIX}/{n}/"}
                for n in installed
                if n in platform.registry
            ],
        }

    @router.get("/readyz", dependencies=[public()])
    async def readyz(request: Request) -> JSONResponse:
        """The database answers and its platform schema is at the code's revision."""
        platform: Platform = request.app.state.platform
        checks: dict[str, str] = {}
        started = time.perf_counter()
        try:
            async with platform.db.engine.connect() as conn:
                current = (
                    await conn.execute(text("select version_num from platform.alembic_version"))
                ).scalar()
            head = _platform_head()
            checks["database"] = "ok"
            checks["platform_schema"] = (
                "ok" if current == head else f"at {current}, code needs {head}"
            )
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        body = {
            "status": "ready" if ready else "not-ready",
            "checks": checks,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return router


_head: list[str] = []


def _platform_head() -> str | None:
    if not _head:
        from alembic.script import ScriptDirectory

        _head.append(ScriptDirectory.from_config(alembic_config()).get_current_head() or "")
    return _head[0] or None


__all__ = ["API_PREFIX", "MIGRATIONS_DIR", "TenantScope", "create_app", "resolve_tenant"]
