"""Who may call the platform API, generated from the route table (a new route joins the
matrix by itself): anonymous 401; a clinic member who is no operator, reseller admin or
client 403; a client without the route's scope 403; operator-only and user-only routes
refuse the others 403; another reseller's tenant, job, user or client 404 (its existence
is not revealed); and every read route serves the actors it is meant for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from dentalpin.platform._audit import CLI
from dentalpin.platform._clients import create_client
from dentalpin.tenants._approvals import Requester, request_approval
from tests.api.world import World, client_token, make_world, wait
from tests.platform.identity import client
from tests.platform.test_auth_isolation import PLATFORM_CASES, Case

API_CASES = [c for c in PLATFORM_CASES if c.platform_api is not None]
READS = [c for c in API_CASES if c.method == "GET"]
WRITES = [c for c in API_CASES if c.method != "GET"]

# Every write route and the test that shows the right actor succeeding with it.
WRITE_TESTS = {
    "POST /api/v1/tenants": "test_tenants_api.py::test_operator_tenant_lifecycle",
    "POST /api/v1/tenants/{slug}/archive": "test_tenants_api.py::test_operator_tenant_lifecycle",
    "POST /api/v1/tenants/{slug}/modules": "test_tenants_api.py::test_reseller_module_jobs",
    "POST /api/v1/tenants/{slug}/modules/upgrade": "test_tenants_api.py::test_reseller_module_jobs",
    "POST /api/v1/tenants/{slug}/modules/{module}/uninstall": (
        "test_tenants_api.py::test_reseller_module_jobs"
    ),
    "POST /api/v1/tenants/{slug}/modules/{module}/restore": (
        "test_tenants_api.py::test_reseller_module_jobs"
    ),
    "POST /api/v1/tenants/{slug}/members": "test_people_api.py::test_members_of_a_new_clinic",
    "DELETE /api/v1/tenants/{slug}/members/{user_id}": (
        "test_people_api.py::test_members_of_a_new_clinic"
    ),
    "POST /api/v1/users": "test_people_api.py::test_users",
    "POST /api/v1/resellers": "test_people_api.py::test_resellers_plans_and_usage",
    "PATCH /api/v1/resellers/{reseller_id}": "test_plans.py::test_operators_edit_plans_over_the_api",
    "POST /api/v1/plans": "test_plans.py::test_operators_edit_plans_over_the_api",
    "PATCH /api/v1/plans/{name}": "test_plans.py::test_operators_edit_plans_over_the_api",
    "DELETE /api/v1/plans/{name}": "test_plans.py::test_operators_edit_plans_over_the_api",
    "POST /api/v1/clients": "test_people_api.py::test_integration_clients",
    "POST /api/v1/clients/{client_id}/revoke": "test_people_api.py::test_integration_clients",
    "POST /api/v1/events/failed/{letter_id}/retry": (
        "../platform/test_events_admin.py::test_operators_list_and_replay_dead_letters_over_http"
    ),
    "POST /api/v1/events/retry": (
        "../platform/test_events_admin.py::test_operators_list_and_replay_dead_letters_over_http"
    ),
}


@dataclass
class Fill:
    world: World
    job_id: str
    approval_id: str
    user_id: str
    client_id: str


@pytest.fixture(scope="module")
async def fill(platform) -> Fill:
    world = await make_world(platform)
    async with client(platform) as http:
        job = await http.post(
            f"/api/v1/tenants/{world.r1.tenant.slug}/modules/upgrade",
            json={},
            headers=world.r1.admin_headers,
        )
        assert job.status_code == 202, job.text
        await wait(platform, job.json()["id"])
    approval = await request_approval(
        platform,
        world.r1.tenant,
        "tenant.archive",
        {},
        Requester("test", None, world.r1.id),
        "",
        CLI,
    )
    async with platform.db.engine.begin() as conn:
        spare_client, _ = await create_client(conn, "Spare", world.r1.id, ["tenants:read"], ctx=CLI)
        narrow, narrow_secret = await create_client(
            conn, "Narrow", world.r1.id, ["usage:read"], ctx=CLI
        )
    world.extra["narrow"] = await client_token(platform, narrow, narrow_secret)
    return Fill(world, job.json()["id"], approval["id"], str(world.outsider_user.id), spare_client)


def url(case: Case, fill: Fill) -> str:
    values = {
        "slug": fill.world.r1.tenant.slug,
        "module": "recall",
        "job_id": fill.job_id,
        "approval_id": fill.approval_id,
        "reseller_id": str(fill.world.r1.id),
        "user_id": fill.user_id,
        "client_id": fill.client_id,
        "letter_id": "1",
        "name": "pro",
    }
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], case.path)


def body(case: Case, fill: Fill) -> Any:
    """A valid body, so that a 404 is about the resource, not the request."""
    if case.method not in ("POST", "PUT", "PATCH"):
        return None
    return {
        "/api/v1/tenants/{slug}/modules": {"modules": ["recall"]},
        "/api/v1/tenants/{slug}/modules/{module}/uninstall": {"dry_run": True},
        "/api/v1/tenants/{slug}/members": {
            "email": fill.world.r2.admin.email,
            "roles": ["dentist"],
        },
        "/api/v1/tenants": {"slug": "never-made-here"},
        "/api/v1/users": {"email": "never-made@example.es"},
        "/api/v1/resellers": {"name": "Never Made"},
        "/api/v1/resellers/{reseller_id}": {"plan": "starter"},
        "/api/v1/plans": {"name": "Never Made"},
        "/api/v1/clients": {"name": "Never Made", "scopes": ["tenants:read"]},
        "/api/v1/events/retry": {"ids": [1]},
    }.get(case.path, {})


async def call(http: Any, case: Case, fill: Fill, headers: dict[str, str]) -> Any:
    return await http.request(case.method, url(case, fill), json=body(case, fill), headers=headers)


def test_the_platform_api_is_in_the_matrix():
    ids = {c.id for c in API_CASES}
    assert {"GET /api/v1/tenants", "POST /api/v1/tenants/{slug}/archive", "GET /api/v1/jobs"} <= ids
    assert {c.id for c in WRITES} == set(WRITE_TESTS), "name the test of each write route"


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
async def test_anonymous_is_401(platform, fill: Fill, case: Case):
    async with client(platform) as http:
        response = await call(http, case, fill, {})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
async def test_a_clinic_member_is_403(platform, fill: Fill, case: Case):
    """A clinic admin is no platform actor: refused, and told so, whatever the route."""
    async with client(platform) as http:
        response = await call(http, case, fill, fill.world.outsider)
    assert response.status_code == 403, response.text
    assert fill.world.r1.tenant.name not in response.text


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
async def test_the_wrong_kind_of_actor_is_403(platform, fill: Fill, case: Case):
    guard = case.platform_api
    assert guard is not None
    async with client(platform) as http:
        if guard.operator_only:
            for headers in (fill.world.r1.admin_headers, fill.world.r1.client_headers):
                response = await call(http, case, fill, headers)
                assert response.status_code == 403, response.text
        if guard.users_only or guard.operator_only:
            response = await call(http, case, fill, fill.world.r1.client_headers)
            assert response.status_code == 403, response.text
        if guard.scope != "usage:read":
            response = await call(http, case, fill, fill.world.extra["narrow"])
            assert response.status_code == 403, response.text
            assert response.json()["type"].endswith(
                "insufficient-scope"
                if not (guard.users_only or guard.operator_only)
                else "forbidden"
            )


OWNED_PATHS = [c for c in API_CASES if "{" in c.path and not c.platform_api.operator_only]


@pytest.mark.parametrize("case", OWNED_PATHS, ids=lambda c: c.id)
async def test_another_resellers_resources_are_404(platform, fill: Fill, case: Case):
    """Reseller 2's admin and client ask for reseller 1's tenant, job, user, client..."""
    r2 = fill.world.r2
    async with client(platform) as http:
        actors = [r2.admin_headers]
        if not case.platform_api.users_only:
            actors.append(r2.client_headers)
        for headers in actors:
            response = await call(http, case, fill, headers)
            assert response.status_code == 404, response.text
            assert fill.world.r1.tenant.name not in response.text
            assert fill.world.r1.name not in response.text


@pytest.mark.parametrize("case", READS, ids=lambda c: c.id)
async def test_reads_serve_their_actors(platform, fill: Fill, case: Case):
    guard = case.platform_api
    assert guard is not None
    actors = [fill.world.operator]
    if not guard.operator_only:
        actors.append(fill.world.r1.admin_headers)
        if not guard.users_only:
            actors.append(fill.world.r1.client_headers)
    async with client(platform) as http:
        for headers in actors:
            response = await call(http, case, fill, headers)
            assert response.status_code == 200, (case.id, response.text)
            if headers is not fill.world.operator:
                assert fill.world.r2.tenant.slug not in response.text
                assert fill.world.r2.name not in response.text


async def test_the_platform_api_is_not_served_on_a_clinic_host(platform, fill: Fill):
    tenant = fill.world.r1.tenant
    async with client(platform, f"{tenant.slug}.localhost") as http:
        response = await http.get("/api/v1/tenants", headers=fill.world.r1.admin_headers)
    # A platform token names no clinic: refused at this clinic's host.
    assert response.status_code == 403, response.text


async def test_a_session_without_second_factor_is_403(platform, fill: Fill):
    from tests.platform.identity import bearer, session

    weak = bearer(await session(platform, fill.world.r1.admin, None, mfa=False))
    async with client(platform) as http:
        response = await http.get("/api/v1/tenants", headers=weak)
    assert response.status_code == 403 and "second factor" in response.json()["detail"]


def test_every_route_documents_its_answers():
    from tests.platform.test_auth_isolation import APP

    spec = APP.openapi()
    for case in API_CASES:
        operation = spec["paths"][case.path][case.method.lower()]
        statuses = set(operation["responses"])
        assert {"401", "403", "404"} <= statuses, case.id
        success = {s for s in statuses if s.startswith("2")}
        assert success, case.id
        for status in success - {"204"}:
            content = operation["responses"][status].get("content", {})
            assert content.get("application/json", {}).get("schema"), (case.id, status)
