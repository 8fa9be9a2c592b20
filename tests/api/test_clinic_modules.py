"""A clinic's admins run the clinic's modules on its own host (ADR 0022): the catalogue with
the clinic's state and plan, install, upgrade, uninstall (no approval: the admin is who
approves), restore, and the jobs with their progress and log. The reseller's plan binds
them; members without the permission, support access and other clinics cannot act."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from dentalpin.platform._roles import seeded_grants
from dentalpin.tenants import create_tenant, migrate_platform
from dentalpin.tenants._fleet import platform_head
from tests.api.test_approvals import clinic_admin
from tests.api.world import make_plan, make_reseller, wait
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session
from tests.platform.revisions import downgrade_platform
from tests.platform.test_support_grants import grant

ADMIN_GRANTS = (
    "platform.module.manage",
    "platform.sso.manage",
    "platform.domain.manage",
    "platform.support.manage",
)
MODULES = "/api/v1/modules"
JOBS = "/api/v1/modules/jobs"


async def run(
    platform, http, path: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    """Submit a job on the clinic's host, follow its Location there, and wait for it."""
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"{JOBS}/{job['id']}"
    assert job["worker"] is None
    done = await wait(platform, job["id"])
    assert done.state == "succeeded", done.error
    shown = await http.get(response.headers["location"], headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["state"] == "succeeded" and shown.json()["progress"] == 1.0
    assert shown.json()["worker"] is None
    return shown.json()


async def states(http, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = await http.get(MODULES, headers=headers)
    assert response.status_code == 200, response.text
    return {m["name"]: m for m in response.json()}


async def test_a_clinic_admin_installs_uninstalls_and_restores_its_modules(platform):
    reseller = await make_reseller(platform, modules=("fx_visits",))
    tenant = reseller.tenant
    admin = await clinic_admin(platform, tenant)
    async with client(platform, host_of(tenant)) as http:
        before = await states(http, admin)
        assert before["recall"]["state"] == "absent" and before["recall"]["installable"]
        assert before["recall"]["allowed_by_plan"] is True
        assert before["fx_visits"]["state"] == "installed"
        assert before["fx_visits"]["installed_version"] == before["fx_visits"]["version"]

        installed = await run(platform, http, MODULES, {"modules": ["recall"]}, admin)
        assert (await states(http, admin))["recall"]["state"] == "installed"
        assert (await http.get("/api/v1/recall/reminders", headers=admin)).status_code == 200
        assert any("recall" in line["message"] for line in installed["log"])

        plan = await http.post(
            f"{MODULES}/fx_people/uninstall", json={"dry_run": True, "cascade": True}, headers=admin
        )
        assert plan.status_code == 200, plan.text
        assert plan.json()["modules"] == ["fx_visits", "fx_people"]
        assert plan.json()["needs_approval"] is False
        assert (await states(http, admin))["fx_visits"]["state"] == "installed"  # a dry run

        # A clinical module: a reseller would wait for this admin; the admin does not.
        uninstalled = await run(platform, http, f"{MODULES}/fx_visits/uninstall", {}, admin)
        assert (await states(http, admin))["fx_visits"]["state"] == "uninstalled"
        restored = await run(platform, http, f"{MODULES}/fx_visits/restore", {}, admin)
        upgraded = await run(platform, http, f"{MODULES}/upgrade", {}, admin)
        assert (await states(http, admin))["fx_visits"]["state"] == "installed"

        listed = await http.get(JOBS, headers=admin)
        assert listed.status_code == 200
        ids = [j["id"] for j in listed.json()]
        mine = [upgraded["id"], restored["id"], uninstalled["id"], installed["id"]]
        assert ids[:4] == mine  # newest first
        assert all(j["tenant_id"] == str(tenant.id) and j["worker"] is None for j in listed.json())

        for path, body, status in (
            (MODULES, {"modules": ["nonexistent"]}, 404),
            (MODULES, {"modules": []}, 422),
            (MODULES, {"modules": ["recall"], "tenant": "another"}, 422),
            (f"{MODULES}/fx_visits/restore", {"archive_id": "nope"}, 422),
            (f"{MODULES}/nonexistent/uninstall", {}, 404),
            (f"{MODULES}/x'; drop schema public; --/uninstall", {}, 404),
        ):
            response = await http.post(path, json=body, headers=admin)
            assert response.status_code == status, (path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["detail"]
        removed = await http.post(f"{MODULES}/recall/uninstall", json={}, headers=admin)
        assert removed.status_code == 202, removed.text
        await wait(platform, removed.json()["id"])
        again = await http.post(f"{MODULES}/recall/uninstall", json={}, headers=admin)
        assert again.status_code == 409, again.text

    async with platform.db.engine.connect() as conn:
        audited = list(
            await conn.execute(
                text(
                    "select actor, details->>'as_role', target from platform.audit_log "
                    "where tenant_id = :t and action = 'lifecycle.submitted' order by id"
                ),
                {"t": tenant.id},
            )
        )
    assert [(r[1], r[2]) for r in audited][:2] == [
        ("clinic_admin", "lifecycle.install"),
        ("clinic_admin", "lifecycle.uninstall"),
    ]
    assert all(r[0] and "@" in r[0] for r in audited)


async def test_the_clinic_plan_binds_its_admin(platform):
    plan = await make_plan(platform, modules=["fx_people"])
    reseller = await make_reseller(platform, plan=plan)
    admin = await clinic_admin(platform, reseller.tenant)
    async with client(platform, host_of(reseller.tenant)) as http:
        shown = await states(http, admin)
        assert shown["fx_people"]["allowed_by_plan"] is True
        assert shown["recall"]["allowed_by_plan"] is False
        assert "not part of plan" in shown["recall"]["refused_because"]
        refused = await http.post(MODULES, json={"modules": ["recall"]}, headers=admin)
        assert refused.status_code == 403, refused.text
        assert "not part of plan" in refused.json()["detail"]
        assert "a clinic its reseller" in refused.json()["detail"]  # whom to ask
        # fx_visits needs fx_people (allowed) and is not in the plan itself.
        refused = await http.post(MODULES, json={"modules": ["fx_visits"]}, headers=admin)
        assert refused.status_code == 403
        assert (await http.get(JOBS, headers=admin)).json() == []  # nothing was submitted
        assert (await states(http, admin))["recall"]["state"] == "absent"

    own = await create_tenant(platform, unique_slug("own"), modules=[])  # the operator's clinic
    own_admin = await clinic_admin(platform, own)
    async with client(platform, host_of(own)) as http:
        shown = await states(http, own_admin)
        assert shown["recall"]["allowed_by_plan"] is None
        await run(platform, http, MODULES, {"modules": ["recall"]}, own_admin)


async def test_only_the_permission_may_and_support_access_may_only_look(platform):
    reseller = await make_reseller(platform, modules=("recall",))
    tenant = reseller.tenant
    admin = await clinic_admin(platform, tenant)
    dentist_user = await make_user(platform)
    await add_member(platform, tenant, dentist_user, ["dentist"])
    dentist = bearer(await session(platform, dentist_user, tenant))
    operator = await make_user(platform, operator=True)
    await grant(platform, tenant, admin, operator.email, roles=["admin"])
    helper = bearer(await session(platform, operator, tenant))
    assert "platform.module.manage" in seeded_grants(platform.registry, [])["admin"]

    async with client(platform, host_of(tenant)) as http:
        for method, path in (("GET", MODULES), ("POST", MODULES), ("GET", JOBS)):
            body = {"modules": ["fx_people"]} if method == "POST" else None
            response = await http.request(method, path, json=body, headers=dentist)
            assert response.status_code == 403, response.text
        assert (await http.get(MODULES, headers=helper)).status_code == 200
        for path, body in (
            (MODULES, {"modules": ["fx_people"]}),
            (f"{MODULES}/upgrade", {}),
            (f"{MODULES}/recall/uninstall", {}),
            (f"{MODULES}/recall/restore", {}),
        ):
            response = await http.post(path, json=body, headers=helper)
            assert response.status_code == 403, response.text
            assert "support access cannot" in response.json()["detail"]
        assert (await http.get(JOBS, headers=admin)).json() == []


async def test_another_clinic_neither_sees_nor_runs_this_clinics_jobs(platform):
    a = await make_reseller(platform)
    b = await make_reseller(platform)
    admin_a = await clinic_admin(platform, a.tenant)
    admin_b = await clinic_admin(platform, b.tenant)
    async with client(platform, host_of(a.tenant)) as http:
        job = await run(platform, http, MODULES, {"modules": ["recall"]}, admin_a)
        # B's admin, on A's host: the token is for another clinic.
        crossed = await http.post(MODULES, json={"modules": ["fx_people"]}, headers=admin_b)
        assert crossed.status_code == 403
    async with client(platform, host_of(b.tenant)) as http:
        listed = await http.get(JOBS, headers=admin_b)
        assert listed.status_code == 200 and job["id"] not in listed.text
        missing = await http.get(f"{JOBS}/{job['id']}", headers=admin_b)
        assert missing.status_code == 404
        never = await http.get(f"{JOBS}/00000000-0000-0000-0000-000000000000", headers=admin_b)
        assert (
            never.json()["detail"].replace("00000000-0000-0000-0000-000000000000", job["id"])
            == missing.json()["detail"]
        )  # the same answer as a job that never was
        assert (await states(http, admin_b))["recall"]["state"] == "absent"


async def test_clinics_older_than_the_permission_get_it_with_the_revision(fresh_platform):
    """Revision 0008 grants existing clinics' admin roles what new clinics' are seeded
    with (and the grants 0006 and 0007 only seeded); custom roles get nothing."""
    platform = fresh_platform
    tenant = await create_tenant(platform, unique_slug("old"), modules=["recall"])
    granted = sorted(ADMIN_GRANTS)

    async def held(role: str) -> list[str]:
        async with platform.db.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "select permission from platform.role_permissions where tenant_id = :t "
                    "and role = :r and permission = any(:p) order by permission"
                ),
                {"t": tenant.id, "r": role, "p": granted},
            )
            return list(rows.scalars())

    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                "insert into platform.roles (tenant_id, name, description) values (:t, 'desk', '')"
            ),
            {"t": tenant.id},
        )
        await conn.execute(  # the clinic as a platform before these revisions left it
            text(
                "delete from platform.role_permissions where tenant_id = :t and permission = any(:p)"
            ),
            {"t": tenant.id, "p": granted},
        )

    async with platform.db.engine.connect() as conn:
        await downgrade_platform(conn, "0007_sso_domains")
        await conn.commit()
    assert await held("admin") == []
    assert await migrate_platform(platform) == platform_head()
    assert await held("admin") == granted
    assert await held("desk") == []
