"""Platform API: tenants and their module lifecycle, run for real (jobs, archives)."""

from __future__ import annotations

from sqlalchemy import text

from tests.api.world import make_reseller, wait
from tests.conftest import unique_slug
from tests.platform.identity import bearer, client, make_user, session


async def audit_actions(platform, tenant_id) -> list[str]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text("select action from platform.audit_log where tenant_id = :t order by id"),
            {"t": tenant_id},
        )
        return list(rows.scalars())


async def test_operator_tenant_lifecycle(platform):
    operator = bearer(await session(platform, await make_user(platform, operator=True), None))
    reseller = await make_reseller(platform)
    slug = unique_slug("op")
    async with client(platform) as http:
        created = await http.post(
            "/api/v1/tenants",
            json={"slug": slug, "name": "Clínica Norte", "reseller_id": str(reseller.id)},
            headers=operator,
        )
        assert created.status_code == 201, created.text
        assert created.headers["location"] == f"/api/v1/tenants/{slug}"
        tenant = created.json()
        assert tenant["reseller_id"] == str(reseller.id) and tenant["status"] == "active"
        assert "schema" not in tenant  # internals stay internal

        listed = (await http.get("/api/v1/tenants", headers=operator)).json()
        assert slug in {t["slug"] for t in listed}
        # The reseller sees it too (it is theirs), the other way round is tested in the matrix.
        own = (await http.get("/api/v1/tenants", headers=reseller.admin_headers)).json()
        assert {t["slug"] for t in own} == {slug, reseller.tenant.slug}
        shown = (await http.get(f"/api/v1/tenants/{slug}", headers=operator)).json()
        assert shown["modules"]["fx_people"]["state"] == "installed" and shown["schema_present"]

        for bad, status in (
            ({"slug": "Not A Slug"}, 422),
            ({"slug": slug}, 409),
            ({"slug": unique_slug("op"), "modules": ["nonexistent"]}, 404),
            ({"slug": unique_slug("op"), "reseller_id": str(tenant["id"])}, 422),
            ({"slug": unique_slug("op"), "surprise": 1}, 422),
        ):
            response = await http.post("/api/v1/tenants", json=bad, headers=operator)
            assert response.status_code == status, (bad, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"]

        # Operators archive directly: a job (202 + Location), followed on /jobs.
        archived = await http.post(f"/api/v1/tenants/{slug}/archive", headers=operator)
        assert archived.status_code == 202, archived.text
        job = archived.json()
        assert archived.headers["location"] == f"/api/v1/jobs/{job['id']}"
        assert job["kind"] == "tenant.archive" and job["state"] in ("queued", "running")
        await wait(platform, job["id"])
        followed = (await http.get(f"/api/v1/jobs/{job['id']}", headers=operator)).json()
        assert followed["state"] == "succeeded" and followed["progress"] == 1.0
        assert followed["log"] and followed["result"]["archive_id"]
        jobs = (await http.get(f"/api/v1/jobs?tenant={slug}", headers=operator)).json()
        assert [j["id"] for j in jobs] == [job["id"]]

        assert (await http.get(f"/api/v1/tenants/{slug}", headers=operator)).status_code == 404
        everything = (await http.get("/api/v1/tenants?archived=true", headers=operator)).json()
        gone = next(t for t in everything if t["slug"] == slug)
        assert (
            gone["status"] == "archived" and gone["archive_id"] == followed["result"]["archive_id"]
        )
    actions = await audit_actions(platform, tenant["id"])
    assert "tenant.created" in actions and "lifecycle.submitted" in actions


async def test_reseller_module_jobs(platform):
    reseller = await make_reseller(platform)
    slug = reseller.tenant.slug
    base = f"/api/v1/tenants/{slug}/modules"

    async def run(http, path, body, headers):
        response = await http.post(path, json=body, headers=headers)
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/api/v1/jobs/{response.json()['id']}"
        done = await wait(platform, response.json()["id"])
        assert done.state == "succeeded", done.error
        return done

    async with client(platform) as http:
        await run(http, base, {"modules": ["recall"]}, reseller.client_headers)
        await run(http, f"{base}/upgrade", {}, reseller.admin_headers)
        states = {
            m["name"]: m for m in (await http.get(base, headers=reseller.client_headers)).json()
        }
        assert states["recall"]["tenant_state"] == "installed"
        assert states["recall"]["allowed_by_plan"] is True

        plan = await http.post(
            f"{base}/recall/uninstall", json={"dry_run": True}, headers=reseller.admin_headers
        )
        assert plan.status_code == 200, plan.text
        assert plan.json()["modules"] == ["recall"] and plan.json()["needs_approval"] is False

        # recall is no clinical module: a reseller uninstalls it at once.
        await run(http, f"{base}/recall/uninstall", {}, reseller.client_headers)
        states = {
            m["name"]: m for m in (await http.get(base, headers=reseller.admin_headers)).json()
        }
        assert states["recall"]["tenant_state"] == "uninstalled"
        await run(http, f"{base}/recall/restore", {}, reseller.admin_headers)
        shown = (await http.get(f"/api/v1/tenants/{slug}", headers=reseller.admin_headers)).json()
        assert shown["modules"]["recall"]["state"] == "installed"

        for path, body, status in (
            (base, {"modules": ["nonexistent"]}, 404),
            (base, {"modules": []}, 422),
            (f"{base}/fx_visits/uninstall", {}, 409),  # not installed
            (f"{base}/recall/restore", {"archive_id": "nope"}, 422),
        ):
            response = await http.post(path, json=body, headers=reseller.admin_headers)
            assert response.status_code == status, (path, response.text)
            assert response.json()["detail"]
