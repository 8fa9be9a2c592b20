"""The HTTP skeleton: health, tenant routing by host, module gates, problem details."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import text

from dentalpin.app import API_PREFIX, create_app, module_gate
from dentalpin.platform import Tenant, TenantDB, public
from dentalpin.platform._db import Database
from dentalpin.platform._problems import MEDIA_TYPE, PROBLEM_BASE
from dentalpin.platform._runtime import Platform
from dentalpin.platform._settings import Settings
from dentalpin.tenants import TenantRecord, create_tenant
from tests.conftest import unique_slug

PEOPLE = f"{API_PREFIX}/fx_people/people"
RECALL_STATUS = f"{API_PREFIX}/recall/status"
RECALL_REMINDERS = f"{API_PREFIX}/recall/reminders"
PROBE = f"{API_PREFIX}/probe"
PLATFORM_API = {
    *("auth", "me", "members", "roles", "audit", "approvals", "sso", "domains", "events"),
    *("tenants", "jobs", "resellers", "plans", "users", "clients"),
    *("invitations", "support-grants", "modules"),
}
"""The platform's own API (dentalpin/api), next to the module routes."""


def host(tenant: TenantRecord) -> dict[str, str]:
    return {"host": f"{tenant.slug}.localhost"}


def assert_problem(
    response: httpx.Response, status: int, kind: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem with every member, served with the problem media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys()
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_BASE)
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    if kind is not None:
        assert body["type"] == PROBLEM_BASE + kind
    return body


def probe_router() -> APIRouter:
    """Test-only routes: read the tenant's data through `TenantDB`, validate input, crash."""
    router = APIRouter()

    @router.get("/people", dependencies=[public()])
    async def people_names(db: TenantDB, tenant: Tenant) -> dict[str, Any]:
        rows = await db.execute(text("select name from people order by id"))
        return {"tenant": tenant.slug, "names": [r.name for r in rows]}

    @router.get("/items/{item_id}", dependencies=[public()])
    async def item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"item_id": item_id, "limit": limit}

    @router.get("/boom", dependencies=[public()])
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return router


def build_app(platform: Platform) -> FastAPI:
    app = create_app(platform)
    app.include_router(
        probe_router(), prefix=PROBE, dependencies=[Depends(module_gate("fx_people"))]
    )
    return app


@dataclass
class World:
    with_recall: TenantRecord
    without_recall: TenantRecord


@pytest.fixture(scope="module")
async def world(platform: Platform) -> World:
    return World(
        with_recall=await create_tenant(platform, unique_slug("http-a"), modules=["recall"]),
        without_recall=await create_tenant(platform, unique_slug("http-b")),
    )


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    # ASGITransport runs no lifespan: create_app(platform) must be usable as it is.
    transport = httpx.ASGITransport(app=build_app(platform), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def sql(platform: Platform, statement: str, **params: Any) -> None:
    async with platform.db.engine.begin() as conn:
        await conn.execute(text(statement), params)


# Health -------------------------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"host": "nobody.localhost"})
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["version"]


async def test_readyz_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "platform_schema": "ok"}


async def test_readyz_503_when_database_unreachable(platform: Platform) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        data_dir=platform.settings.data_dir,
        environment="test",
    )
    broken = Platform(
        settings=settings, db=Database.from_settings(settings), registry=platform.registry
    )
    try:
        transport = httpx.ASGITransport(app=create_app(broken), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            ready = await c.get("/readyz")
            alive = await c.get("/healthz")
            module_route = await c.get(RECALL_STATUS, headers={"host": "x.localhost"})
    finally:
        await broken.close()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not-ready"
    assert body["checks"]["database"].startswith("unavailable: ")
    assert len(body["checks"]["database"]) > len("unavailable: ")
    assert alive.status_code == 200  # liveness does not depend on the database
    # A module route with no database to resolve the tenant fails as a problem, not a crash page.
    assert_problem(module_route, 503)


async def test_readyz_503_when_platform_schema_behind(
    fresh_platform: Platform,
) -> None:
    await sql(fresh_platform, "update platform.alembic_version set version_num = 'older'")
    transport = httpx.ASGITransport(app=create_app(fresh_platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert "at older" in response.json()["checks"]["platform_schema"]


# Module routes and the tenant's module states -----------------------------------------


async def test_public_module_route_answers_for_the_hosts_tenant(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(RECALL_STATUS, headers=host(world.with_recall))
    assert response.status_code == 200, response.text
    assert response.json() == {"module": "recall", "tenant": world.with_recall.slug}


async def test_permission_route_is_401_without_a_token(
    client: httpx.AsyncClient, world: World
) -> None:
    for path in (RECALL_REMINDERS, PEOPLE):
        response = await client.get(path, headers=host(world.with_recall))
        body = assert_problem(response, 401, "unauthenticated")
        assert body["title"] == "Unauthenticated"
        assert body["instance"] == path
        assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_module_not_installed_is_404(client: httpx.AsyncClient, world: World) -> None:
    for path in (RECALL_STATUS, RECALL_REMINDERS):
        response = await client.get(path, headers=host(world.without_recall))
        body = assert_problem(response, 404, "not-found")
        assert "recall" in body["detail"]
        assert "not installed" in body["detail"]
    # The module it does have still answers (401: it needs a permission).
    assert_problem(await client.get(PEOPLE, headers=host(world.without_recall)), 401)


async def test_unknown_host_is_404(client: httpx.AsyncClient) -> None:
    for hostname in ("nobody-here.localhost", "localhost", "127.0.0.1"):
        response = await client.get(RECALL_STATUS, headers={"host": hostname})
        assert "no clinic" in assert_problem(response, 404)["detail"]


async def test_unknown_path_and_wrong_method_are_problems(
    client: httpx.AsyncClient, world: World
) -> None:
    assert_problem(await client.get(f"{API_PREFIX}/no-such-module/x"), 404, "not-found")
    response = await client.post(RECALL_STATUS, headers=host(world.with_recall))
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET"


async def test_module_being_uninstalled_is_409(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    tenant = await create_tenant(platform, unique_slug("http-409"), modules=["recall"])
    await sql(
        platform,
        "update platform.tenant_modules set state = 'uninstalling'"
        " where tenant_id = :id and module = 'recall'",
        id=tenant.id,
    )
    for path in (RECALL_STATUS, RECALL_REMINDERS):
        assert_problem(await client.get(path, headers=host(tenant)), 409, "conflict")
    # Only that module: the tenant's other modules are untouched.
    assert_problem(await client.get(PEOPLE, headers=host(tenant)), 401)


async def test_tenant_schema_behind_the_code_is_503_for_that_module_only(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    tenant = await create_tenant(platform, unique_slug("http-503"), modules=["recall"])
    await sql(
        platform,
        "update platform.tenant_modules set revision = 'fxp_0001'"
        " where tenant_id = :id and module = 'fx_people'",
        id=tenant.id,
    )
    body = assert_problem(await client.get(PEOPLE, headers=host(tenant)), 503, "unavailable")
    assert "fx_people" in body["detail"]
    assert_problem(await client.get(f"{PROBE}/people", headers=host(tenant)), 503)
    # recall is at its head: it keeps answering.
    assert (await client.get(RECALL_STATUS, headers=host(tenant))).status_code == 200


async def test_uninstalled_module_is_404(platform: Platform, client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(platform, unique_slug("http-un"), modules=["recall"])
    await sql(
        platform,
        "update platform.tenant_modules set state = 'uninstalled', revision = null"
        " where tenant_id = :id and module = 'recall'",
        id=tenant.id,
    )
    assert_problem(await client.get(RECALL_STATUS, headers=host(tenant)), 404)


async def test_archived_tenant_is_not_served(platform: Platform, client: httpx.AsyncClient) -> None:
    tenant = await create_tenant(platform, unique_slug("http-arch"), modules=["recall"])
    assert (await client.get(RECALL_STATUS, headers=host(tenant))).status_code == 200
    await sql(
        platform, "update platform.tenants set status = 'archived' where id = :id", id=tenant.id
    )
    assert_problem(await client.get(RECALL_STATUS, headers=host(tenant)), 404)


# Isolation ----------------------------------------------------------------------------


async def test_a_hosts_tenant_never_sees_another_tenants_data(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    a = await create_tenant(platform, unique_slug("iso-a"))
    b = await create_tenant(platform, unique_slug("iso-b"))
    marker = f"only-in-b-{secrets.token_hex(4)}"
    async with platform.db.tenant(b.scope) as session:
        await session.execute(
            text("insert into people (name, kind) values (:name, 'patient')"), {"name": marker}
        )

    seen_by_a = await client.get(f"{PROBE}/people", headers=host(a))
    seen_by_b = await client.get(f"{PROBE}/people", headers=host(b))
    assert seen_by_a.status_code == 200, seen_by_a.text
    assert seen_by_a.json() == {"tenant": a.slug, "names": ["Front desk"]}
    assert seen_by_b.json() == {"tenant": b.slug, "names": ["Front desk", marker]}
    status = await client.get(RECALL_STATUS, headers=host(a))
    assert status.status_code == 404  # a has no recall; b's state does not leak either


# Hosts --------------------------------------------------------------------------------


async def test_custom_domain_routes_only_when_verified(
    platform: Platform, client: httpx.AsyncClient, world: World
) -> None:
    verified = f"clinic-{secrets.token_hex(3)}.example.es"
    unverified = f"pending-{secrets.token_hex(3)}.example.es"
    for hostname, is_verified in ((verified, True), (unverified, False)):
        await sql(
            platform,
            "insert into platform.domains (hostname, tenant_id, verified, verification_token)"
            " values (:hostname, :tenant, :verified, :token)",
            hostname=hostname,
            tenant=world.with_recall.id,
            verified=is_verified,
            token=secrets.token_hex(8),
        )

    response = await client.get(RECALL_STATUS, headers={"host": verified})
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == world.with_recall.slug
    response = await client.get(RECALL_STATUS, headers={"host": f"{verified.upper()}:443"})
    assert response.json()["tenant"] == world.with_recall.slug
    assert_problem(await client.get(RECALL_STATUS, headers={"host": unverified}), 404)


async def test_hostile_host_headers_resolve_to_nothing_or_the_right_tenant(
    client: httpx.AsyncClient, world: World
) -> None:
    a = world.with_recall
    right = {
        f"{a.slug.upper()}.LOCALHOST",
        f"{a.slug}.localhost.",
        f"{a.slug}.localhost:8000",
        f" {a.slug}.localhost ",
    }
    nothing = {
        "evil.com",
        f"{a.slug}.localhost.evil.com",
        f"{a.slug}.evil.com",
        f"x.{a.slug}.localhost",
        f"{a.slug}localhost",
        "'; drop--.localhost",
        "'; drop table platform.tenants; --.localhost",
        f"{a.slug}'--.localhost",
        "%00.localhost",
        "../../etc/passwd.localhost",
        ".localhost",
        "localhost",
        "[::1]:8000",
        "x" * 5000 + ".localhost",
        "",
    }
    raw = ["clínica.localhost".encode(), f"{a.slug}.localhost".encode("utf-16")]
    for hostname in sorted(right):
        response = await client.get(RECALL_STATUS, headers={"host": hostname})
        assert response.status_code == 200, (hostname, response.text)
        assert response.json()["tenant"] == a.slug
    for hostname in [*sorted(nothing), *raw]:
        response = await client.get(RECALL_STATUS, headers={"host": hostname})
        assert response.status_code == 404, (hostname, response.text)
        assert_problem(response, 404)
    # The tenants table survived the attempts.
    assert (await client.get(RECALL_STATUS, headers=host(a))).status_code == 200


async def test_request_without_host_header_is_404(platform: Platform) -> None:
    app = build_app(platform)
    scope_headers: list[tuple[bytes, bytes]] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "http",
        "path": RECALL_STATUS,
        "raw_path": RECALL_STATUS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": scope_headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 404


# Problems -----------------------------------------------------------------------------


async def test_validation_errors_are_422_problems(client: httpx.AsyncClient, world: World) -> None:
    response = await client.get(f"{PROBE}/items/abc?limit=many", headers=host(world.with_recall))
    body = assert_problem(response, 422, "invalid-input")
    locations = sorted(tuple(e["loc"]) for e in body["errors"])
    assert locations == [("path", "item_id"), ("query", "limit")]
    ok = await client.get(f"{PROBE}/items/7?limit=3", headers=host(world.with_recall))
    assert ok.json() == {"item_id": 7, "limit": 3}


async def test_unexpected_errors_are_500_problems_without_internals(
    client: httpx.AsyncClient, world: World
) -> None:
    response = await client.get(f"{PROBE}/boom", headers=host(world.with_recall))
    body = assert_problem(response, 500)
    assert "secret internals" not in response.text
    assert "RuntimeError" not in body["detail"]


# OpenAPI ------------------------------------------------------------------------------


async def test_openapi_lists_module_routes_under_their_prefix(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (PEOPLE, RECALL_STATUS, RECALL_REMINDERS, "/healthz", "/readyz"):
        assert path in paths, sorted(paths)
    module_paths = [p for p in paths if p.startswith(f"{API_PREFIX}/") and p != f"{API_PREFIX}/"]
    for path in module_paths:
        assert path.split("/")[3] in {*platform.registry.names, "probe", *PLATFORM_API}, path
    assert paths[RECALL_STATUS]["get"]["tags"] == ["recall"]
    # Mounted once: every operation appears under one path only.
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


async def test_create_app_without_platform_builds_one_in_its_lifespan(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dentalpin.platform import _settings

    monkeypatch.setenv("DATABASE_URL", platform.settings.database_url or "")
    monkeypatch.setenv("DENTALPIN_ROLE_PREFIX", platform.settings.role_prefix)
    _settings.get_settings.cache_clear()
    try:
        app = create_app()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                assert (await c.get("/readyz")).status_code == 200
            assert isinstance(app.state.platform, Platform)
    finally:
        _settings.get_settings.cache_clear()


async def test_api_index_names_the_hosts_clinic_and_its_modules(
    client: httpx.AsyncClient, world: World
) -> None:
    body = (await client.get(f"{API_PREFIX}/", headers=host(world.with_recall))).json()
    assert body["clinic"]["slug"] == world.with_recall.slug
    names = [m["name"] for m in body["modules"]]
    assert {"fx_people", "patients", "recall"} <= set(names)  # recall brought patients
    other = (await client.get(f"{API_PREFIX}/", headers=host(world.without_recall))).json()
    assert set(names) - {m["name"] for m in other["modules"]} >= {"recall"}
    assert "fx_people" in [m["name"] for m in other["modules"]]
    nobody = await client.get(f"{API_PREFIX}/", headers={"host": "evil.com"})
    assert nobody.status_code == 200
    assert "clinic" not in nobody.json()
