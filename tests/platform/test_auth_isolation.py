"""Isolation and enforcement, generated from the route table: adding a route adds its cases.

- Matrix: for every guarded module route and every built-in role, a member of clinic A
  calling it on clinic B's host gets 403/404 and sees nothing of B; on A's host or the
  bare API host it sees A's data only.
- Platform routes (members, roles, audit, me...) with A's token on B's host: 403.
- Coverage against real enforcement: every route that names permissions answers 403 to
  a member whose role lacks them and serves one whose role holds exactly them.
- Every route of the app is public on purpose, needs a permission, or needs a sign-in.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text

from dentalpin.app import create_app
from dentalpin.platform._http import (
    AuthenticatedRoute,
    PermissionCheck,
    PlatformAccess,
    PublicRoute,
    route_guards,
)
from dentalpin.platform._roles import BUILTIN_ROLES
from dentalpin.platform._tokens import AUDIENCE
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session
from tests.platform.test_contract import MODULES, effective_routes, module_routes

APP = create_app()  # routes only: no lifespan, no database
ROLES = sorted(BUILTIN_ROLES)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    permissions: tuple[str, ...]
    public: bool
    platform_api: PlatformAccess | None = None
    """The guard of a platform API route (operators, resellers, clients; tests/api)."""

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    def url(self) -> str:
        return re.sub(r"\{[^}]+\}", "1", self.path)


def is_api_route(route: Any) -> bool:
    """FastAPI routes (the OpenAPI document and the docs pages are plain Starlette routes)."""
    return isinstance(getattr(route, "original_route", route), APIRoute)


def cases(routes: list[Any]) -> list[Case]:
    found = []
    for route in routes:
        if not is_api_route(route):
            continue
        guards = route_guards(route.dependant)
        permissions = tuple(g.permission for g in guards if isinstance(g, PermissionCheck))
        public = any(isinstance(g, PublicRoute) for g in guards)
        access = next((g for g in guards if isinstance(g, PlatformAccess)), None)
        for method in sorted(route.methods):
            found.append(Case(method, route.path, permissions, public, access))
    return found


MODULE_CASES = [c for m in MODULES for c in cases(module_routes(APP, m))]
GUARDED_MODULE_CASES = [c for c in MODULE_CASES if not c.public]
MODULE_PATHS = {c.path for c in MODULE_CASES}
PLATFORM_CASES = [
    c for c in cases(effective_routes(APP.routes)) if c.path not in MODULE_PATHS and not c.public
]
PERMISSION_CASES = [c for c in [*GUARDED_MODULE_CASES, *PLATFORM_CASES] if c.permissions]


def test_the_matrix_is_not_empty():
    assert {"GET /api/v1/recall/reminders", "GET /api/v1/fx_people/people"} <= {
        c.id for c in GUARDED_MODULE_CASES
    }
    assert {"GET /api/v1/members", "GET /api/v1/audit", "GET /api/v1/me"} <= {
        c.id for c in PLATFORM_CASES
    }


def test_every_route_is_public_or_guarded():
    unguarded = [
        f"{sorted(r.methods)} {r.path}"
        for r in effective_routes(APP.routes)
        if is_api_route(r) and not route_guards(r.dependant)
    ]
    assert unguarded == []
    kinds = {
        type(g)
        for r in effective_routes(APP.routes)
        if is_api_route(r)
        for g in route_guards(r.dependant)
    }
    assert kinds == {PermissionCheck, PublicRoute, AuthenticatedRoute, PlatformAccess}


@dataclass
class World:
    a: Any
    b: Any
    tokens: dict[str, dict[str, str]]
    marker: str


@pytest.fixture(scope="module")
async def world(platform) -> World:
    everything = [m for m in MODULES if platform.registry.get(m).manifest.installable]
    a = await create_tenant(platform, unique_slug("iso-a"), modules=everything)
    b = await create_tenant(platform, unique_slug("iso-b"), modules=everything)
    marker = f"only-in-b-{secrets.token_hex(4)}"
    async with platform.db.tenant(b.scope) as s:
        await s.execute(
            text("insert into people (name, kind, email) values (:n, 'patient', :e)"),
            {"n": marker, "e": f"{marker}@example.es"},
        )
        patient = (
            await s.execute(
                text(
                    "insert into patients_patients (given_name, family_name, email) "
                    "values (:n, :n, :e) returning id"
                ),
                {"n": marker, "e": f"{marker}@example.es"},
            )
        ).scalar()
        await s.execute(
            text(
                "insert into recall_reminders (patient_id, due_on, channel) values (:p, now(), :c)"
            ),
            {"p": patient, "c": marker},
        )
    # B has members too, so their e-mails could leak.
    b_admin = await make_user(platform, email=f"{marker}-admin@example.es")
    await add_member(platform, b, b_admin, ["admin"])
    tokens = {}
    for role in ROLES:
        user = await make_user(platform)
        await add_member(platform, a, user, [role])
        tokens[role] = bearer(await session(platform, user, a))
    return World(a, b, tokens, marker)


async def call(http, case: Case, headers: dict[str, str]):
    body = {} if case.method in ("POST", "PUT", "PATCH") else None
    return await http.request(case.method, case.url(), json=body, headers=headers)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", GUARDED_MODULE_CASES, ids=lambda c: c.id)
async def test_a_member_of_a_never_reaches_b(platform, world: World, case: Case, role: str):
    token = world.tokens[role]
    async with client(platform) as http:
        on_b = await call(http, case, {**token, "host": host_of(world.b)})
        assert on_b.status_code in (403, 404), on_b.text
        assert world.marker not in on_b.text
        for host in (host_of(world.a), "localhost"):
            own = await call(http, case, {**token, "host": host})
            assert own.status_code not in (401, 500), own.text
            assert world.marker not in own.text
            allowed = BUILTIN_ROLE_GRANTS(platform, world.a)[role]
            if set(case.permissions) <= allowed:
                # 422: the matrix's placeholder body and ids; 428: an edit of a versioned
                # row without If-Match. Both are about the request, past the permission.
                assert own.status_code < 400 or own.status_code in (422, 428), (host, own.text)
            else:
                assert own.status_code == 403, (host, own.text)


def BUILTIN_ROLE_GRANTS(platform, tenant) -> dict[str, set[str]]:  # noqa: N802
    from dentalpin.platform._roles import seeded_grants

    installed = [m for m in MODULES if platform.registry.get(m).manifest.installable]
    return seeded_grants(platform.registry, installed)


@pytest.mark.parametrize("case", PLATFORM_CASES, ids=lambda c: c.id)
async def test_platform_routes_refuse_a_token_of_another_clinic(platform, world: World, case: Case):
    async with client(platform) as http:
        response = await call(http, case, {**world.tokens["admin"], "host": host_of(world.b)})
    assert response.status_code == 403, response.text
    assert world.marker not in response.text


async def test_platform_reads_on_the_own_clinic_show_nothing_of_the_other(platform, world: World):
    async with client(platform) as http:
        for path in ("/api/v1/members", "/api/v1/roles", "/api/v1/audit", "/api/v1/me"):
            response = await http.get(path, headers=world.tokens["admin"])
            assert response.status_code == 200, (path, response.text)
            assert world.marker not in response.text
            assert str(world.b.id) not in response.text


async def test_no_token_is_401_everywhere(platform, world: World):
    async with client(platform) as http:
        for case in [*GUARDED_MODULE_CASES, *PLATFORM_CASES]:
            response = await call(http, case, {"host": host_of(world.a)})
            assert response.status_code == 401, (case.id, response.text)


@pytest.mark.parametrize("case", PERMISSION_CASES, ids=lambda c: c.id)
async def test_every_permission_is_enforced(platform, world: World, case: Case):
    """Against real enforcement: without the route's permissions 403, with exactly them
    the route runs (2xx, or 4xx about the request itself)."""
    tenant = world.a
    admin_user = await make_user(platform)
    await add_member(platform, tenant, admin_user, ["admin"])
    admin = bearer(await session(platform, admin_user, tenant))
    name = f"only_{secrets.token_hex(3)}"
    async with client(platform, host_of(tenant)) as http:
        for role, permissions in ((f"{name}_none", []), (name, list(case.permissions))):
            created = await http.post(
                "/api/v1/roles", json={"name": role, "permissions": permissions}, headers=admin
            )
            assert created.status_code == 201, created.text
        without, with_ = await make_user(platform), await make_user(platform)
        await add_member(platform, tenant, without, [f"{name}_none"])
        await add_member(platform, tenant, with_, [name])
        refused = await call(http, case, bearer(await session(platform, without, tenant)))
        assert refused.status_code == 403, refused.text
        served = await call(http, case, bearer(await session(platform, with_, tenant)))
        assert served.status_code not in (401, 403, 405, 500), served.text


async def test_a_token_claiming_permissions_gets_none_of_them(platform, world: World):
    from joserfc import jwt

    from dentalpin.platform._tokens import ALGORITHM, keyring

    user = await make_user(platform)
    await add_member(platform, world.a, user, ["dentist"])
    pair = await session(platform, user, world.a)
    ring = await keyring(platform)
    decoded = jwt.decode(pair.access_token, ring.verify, algorithms=[ALGORITHM])
    header, payload = decoded.header, decoded.claims
    assert payload["aud"] == AUDIENCE
    forged = jwt.encode(
        header,
        {**payload, "permissions": ["recall.reminder.read"], "roles": ["admin"], "scope": "*"},
        ring.signing,
        algorithms=[ALGORITHM],
    )
    async with client(platform, host_of(world.a)) as http:
        response = await http.get("/api/v1/recall/reminders", headers=bearer(forged))
        assert response.status_code == 403
        me = (await http.get("/api/v1/me", headers=bearer(forged))).json()
    assert me["roles"] == ["dentist"] and "recall.reminder.read" not in me["permissions"]
