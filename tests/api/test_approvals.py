"""A reseller's destructive operations wait for the clinic admin: uninstalling a clinical
module (or cascading into one) and archiving the clinic. Approving runs the job; all of
it is audited; another clinic's admin, or a member without the permission, cannot decide."""

from __future__ import annotations

from sqlalchemy import text

from tests.api.test_tenants_api import audit_actions
from tests.api.world import make_reseller, wait
from tests.platform.identity import add_member, bearer, client, host_of, make_user, session


async def clinic_admin(platform, tenant) -> dict[str, str]:
    user = await make_user(platform)
    await add_member(platform, tenant, user, ["admin"])
    return bearer(await session(platform, user, tenant))


async def test_uninstalling_a_clinical_module_waits_for_the_clinic_admin(platform):
    reseller = await make_reseller(platform, modules=("fx_visits",))
    other = await make_reseller(platform)
    tenant = reseller.tenant
    admin = await clinic_admin(platform, tenant)
    other_admin = await clinic_admin(platform, other.tenant)
    dentist_user = await make_user(platform)
    await add_member(platform, tenant, dentist_user, ["dentist"])
    dentist = bearer(await session(platform, dentist_user, tenant))
    path = f"/api/v1/tenants/{tenant.slug}/modules/fx_visits/uninstall"

    async with client(platform) as http:
        dry = await http.post(path, json={"dry_run": True}, headers=reseller.admin_headers)
        assert dry.status_code == 200 and dry.json()["needs_approval"] is True
        cascade = await http.post(
            f"/api/v1/tenants/{tenant.slug}/modules/fx_people/uninstall",
            json={"dry_run": True, "cascade": True},
            headers=reseller.client_headers,
        )
        assert cascade.json()["modules"] == ["fx_visits", "fx_people"]
        assert cascade.json()["needs_approval"] is True  # it would take fx_visits along

        asked = await http.post(
            path, json={"reason": "customer asked to stop charting"}, headers=reseller.admin_headers
        )
        assert asked.status_code == 202, asked.text
        pending = asked.json()
        assert pending["status"] == "awaiting-approval"
        approval = pending["approval"]
        assert approval["state"] == "pending" and approval["kind"] == "lifecycle.uninstall"
        assert approval["requested_by"] == reseller.admin.email
        assert asked.headers["location"] == (
            f"/api/v1/tenants/{tenant.slug}/approvals/{approval['id']}"
        )
        again = await http.post(path, json={}, headers=reseller.client_headers)
        assert again.json()["approval"]["id"] == approval["id"]  # one pending request

        shown = await http.get(f"/api/v1/tenants/{tenant.slug}", headers=reseller.admin_headers)
        assert shown.json()["modules"]["fx_visits"]["state"] == "installed"  # nothing ran

    async with client(platform, host_of(tenant)) as clinic:
        listed = (await clinic.get("/api/v1/approvals?state=pending", headers=admin)).json()
        assert [a["id"] for a in listed] == [approval["id"]]
        assert listed[0]["reason"] == "customer asked to stop charting"
        refused = await clinic.post(f"/api/v1/approvals/{approval['id']}/approve", headers=dentist)
        assert refused.status_code == 403, refused.text
        for headers in (reseller.admin_headers, reseller.client_headers):  # not their decision
            refused = await clinic.post(
                f"/api/v1/approvals/{approval['id']}/approve", headers=headers
            )
            assert refused.status_code == 403, refused.text

    async with client(platform, host_of(other.tenant)) as elsewhere:
        for method, suffix in (("GET", ""), ("POST", "/approve"), ("POST", "/reject")):
            response = await elsewhere.request(
                method, f"/api/v1/approvals/{approval['id']}{suffix}", headers=other_admin
            )
            assert response.status_code == 404, response.text
        assert (await elsewhere.get("/api/v1/approvals", headers=other_admin)).json() == []

    async with client(platform, host_of(tenant)) as clinic:
        approved = await clinic.post(
            f"/api/v1/approvals/{approval['id']}/approve", json={"note": "ok"}, headers=admin
        )
        assert approved.status_code == 202, approved.text
        job = approved.json()
        # The job is followed where the admin is: on the clinic's host.
        assert approved.headers["location"] == f"/api/v1/modules/jobs/{job['id']}"
        assert job["kind"] == "lifecycle.uninstall"
        assert (await wait(platform, job["id"])).state == "succeeded"
        followed = await clinic.get(approved.headers["location"], headers=admin)
        assert followed.status_code == 200 and followed.json()["state"] == "succeeded"
        twice = await clinic.post(f"/api/v1/approvals/{approval['id']}/approve", headers=admin)
        assert twice.status_code == 409

    async with client(platform) as http:
        seen = await http.get(asked.headers["location"], headers=reseller.admin_headers)
        assert seen.json()["state"] == "approved" and seen.json()["job_id"] == job["id"]
        assert seen.json()["note"] == "ok"
        shown = await http.get(f"/api/v1/tenants/{tenant.slug}", headers=reseller.admin_headers)
        assert shown.json()["modules"]["fx_visits"]["state"] == "uninstalled"
    actions = await audit_actions(platform, tenant.id)
    assert "approval.requested" in actions and "approval.approved" in actions


async def test_archiving_a_clinic_waits_and_can_be_rejected(platform):
    reseller = await make_reseller(platform)
    tenant = reseller.tenant
    admin = await clinic_admin(platform, tenant)
    async with client(platform) as http:
        asked = await http.post(
            f"/api/v1/tenants/{tenant.slug}/archive", headers=reseller.client_headers
        )
        assert asked.status_code == 202 and asked.json()["status"] == "awaiting-approval"
        approval = asked.json()["approval"]
        assert approval["requested_by"] == reseller.client_id
    async with client(platform, host_of(tenant)) as clinic:
        rejected = await clinic.post(
            f"/api/v1/approvals/{approval['id']}/reject",
            json={"note": "we are staying"},
            headers=admin,
        )
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["state"] == "rejected" and rejected.json()["job_id"] is None
        late = await clinic.post(f"/api/v1/approvals/{approval['id']}/approve", headers=admin)
        assert late.status_code == 409
        audit = (await clinic.get("/api/v1/audit?action=approval.rejected", headers=admin)).json()
        assert [e["target"] for e in audit] == [approval["id"]]
    async with client(platform) as http:
        shown = await http.get(f"/api/v1/tenants/{tenant.slug}", headers=reseller.admin_headers)
        assert shown.status_code == 200 and shown.json()["status"] == "active"


async def test_operators_run_destructive_operations_directly(platform):
    reseller = await make_reseller(platform, modules=("fx_visits",))
    operator = bearer(await session(platform, await make_user(platform, operator=True), None))
    async with client(platform) as http:
        response = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/modules/fx_visits/uninstall",
            json={},
            headers=operator,
        )
        assert response.status_code == 202, response.text
        assert response.json()["kind"] == "lifecycle.uninstall"  # a job, no approval
        assert (await wait(platform, response.json()["id"])).state == "succeeded"


async def test_an_undecided_request_expires(platform):
    reseller = await make_reseller(platform)
    admin = await clinic_admin(platform, reseller.tenant)
    async with client(platform) as http:
        asked = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/archive", headers=reseller.admin_headers
        )
    approval = asked.json()["approval"]
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                "update platform.approval_requests set expires_at = now() - interval '1 second'"
                " where id = :id"
            ),
            {"id": approval["id"]},
        )
    async with client(platform, host_of(reseller.tenant)) as clinic:
        late = await clinic.post(f"/api/v1/approvals/{approval['id']}/approve", headers=admin)
        assert late.status_code == 409 and "expired" in late.json()["detail"]
        shown = await clinic.get(f"/api/v1/approvals/{approval['id']}", headers=admin)
        assert shown.json()["state"] == "expired"
    async with client(platform) as http:
        again = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/archive", headers=reseller.admin_headers
        )
    assert again.json()["approval"]["id"] != approval["id"]  # asked anew
