"""Platform API: users, a new clinic's first members, resellers with plans and usage, and
integration clients (secret shown once, revocation effective at once)."""

from __future__ import annotations

import secrets

from tests.api.world import TOKEN, make_reseller
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, client, make_user, session


async def operator_headers(platform) -> dict[str, str]:
    return bearer(await session(platform, await make_user(platform, operator=True), None))


async def test_users(platform):
    reseller = await make_reseller(platform)
    stranger = await make_user(platform)
    member = await make_user(platform)
    await add_member(platform, reseller.tenant, member, ["dentist"])
    email = f"new-{secrets.token_hex(3)}@Example.ES"
    async with client(platform) as http:
        created = await http.post(
            "/api/v1/users", json={"email": email, "name": "Nuevo"}, headers=reseller.client_headers
        )
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["email"] == email.lower() and created.headers["location"].endswith(user["id"])
        again = await http.post(
            "/api/v1/users", json={"email": email}, headers=reseller.admin_headers
        )
        assert again.status_code == 409
        bad = await http.post(
            "/api/v1/users", json={"email": "nope"}, headers=reseller.admin_headers
        )
        assert bad.status_code == 422 and "not an e-mail address" in bad.json()["detail"]

        seen = {
            u["email"]
            for u in (await http.get("/api/v1/users", headers=reseller.admin_headers)).json()
        }
        assert {member.email, reseller.admin.email} <= seen
        assert stranger.email not in seen
        hidden = await http.get(f"/api/v1/users/{stranger.id}", headers=reseller.admin_headers)
        assert hidden.status_code == 404
        shown = await http.get(f"/api/v1/users/{member.id}", headers=reseller.client_headers)
        assert shown.status_code == 200 and shown.json()["email"] == member.email
        operator = await operator_headers(platform)
        assert (await http.get(f"/api/v1/users/{stranger.id}", headers=operator)).status_code == 200


async def test_members_of_a_new_clinic(platform):
    reseller = await make_reseller(platform)
    first, second = await make_user(platform), await make_user(platform)
    async with client(platform) as http:
        slug = unique_slug("mb")
        created = await http.post(
            "/api/v1/tenants", json={"slug": slug}, headers=reseller.admin_headers
        )
        assert created.status_code == 201, created.text
        members = f"/api/v1/tenants/{slug}/members"

        self_grant = await http.post(
            members,
            json={"email": reseller.admin.email, "roles": ["dentist"]},
            headers=reseller.admin_headers,
        )
        assert self_grant.status_code == 403, self_grant.text
        staff = await http.post(
            members,
            json={"email": second.email, "roles": ["receptionist"]},
            headers=reseller.client_headers,
        )
        assert staff.status_code == 201, staff.text
        removed = await http.delete(f"{members}/{second.id}", headers=reseller.admin_headers)
        assert removed.status_code == 204  # no admin yet: still the reseller's to set up
        added = await http.post(
            members, json={"email": first.email, "roles": ["admin"]}, headers=reseller.admin_headers
        )
        assert added.status_code == 201, added.text
        assert added.json()["roles"] == ["admin"]

        # From now on the clinic's admin manages its members, not the reseller.
        late = await http.post(
            members,
            json={"email": second.email, "roles": ["dentist"]},
            headers=reseller.admin_headers,
        )
        assert late.status_code == 409 and "already has an admin" in late.json()["detail"]
        late = await http.delete(f"{members}/{first.id}", headers=reseller.admin_headers)
        assert late.status_code == 409

        listed = (await http.get(members, headers=reseller.client_headers)).json()
        assert [(m["email"], m["roles"]) for m in listed] == [(first.email, ["admin"])]
        roles = {
            r["name"]: r
            for r in (
                await http.get(f"/api/v1/tenants/{slug}/roles", headers=reseller.admin_headers)
            ).json()
        }
        assert "platform.approval.manage" in roles["admin"]["permissions"]

        # An operator can end a (compromised) membership; not the last admin, though.
        operator = await operator_headers(platform)
        last = await http.delete(f"{members}/{first.id}", headers=operator)
        assert last.status_code == 409 and "no admin left" in last.json()["detail"]
        await add_member(platform, reseller.tenant, second, ["dentist"])
        missing = await http.delete(f"{members}/{second.id}", headers=operator)
        assert missing.status_code == 404  # a member of another clinic, not of this one


async def test_resellers_plans_and_usage(platform):
    reseller = await make_reseller(platform, modules=("recall",))
    operator = await operator_headers(platform)
    name = f"Partner {secrets.token_hex(3)}"
    async with client(platform) as http:
        unknown = await http.post(
            "/api/v1/resellers", json={"name": name, "plan": "platinum"}, headers=operator
        )
        assert unknown.status_code == 422 and "starter" in unknown.json()["detail"]
        made = await http.post(
            "/api/v1/resellers", json={"name": name, "plan": "starter"}, headers=operator
        )
        assert made.status_code == 201, made.text
        assert made.json()["plan"] == "starter"
        dup = await http.post("/api/v1/resellers", json={"name": name}, headers=operator)
        assert dup.status_code == 409

        everyone = {
            r["name"] for r in (await http.get("/api/v1/resellers", headers=operator)).json()
        }
        assert {name, reseller.name} <= everyone
        own = (await http.get("/api/v1/resellers", headers=reseller.admin_headers)).json()
        assert [r["name"] for r in own] == [reseller.name]

        plans = {
            p["name"]: p
            for p in (await http.get("/api/v1/plans", headers=reseller.client_headers)).json()
        }
        assert plans["starter"]["countries"] == [] and plans["starter"]["max_tenants"] == 5
        assert plans["pro"]["max_tenants"] is None

        usage = (
            await http.get(f"/api/v1/resellers/{reseller.id}/usage", headers=reseller.admin_headers)
        ).json()
        assert usage["plan"]["name"] == "pro" and usage["tenants_counted"] == 1
        assert usage["tenants"][0]["slug"] == reseller.tenant.slug
        assert "recall" in usage["tenants"][0]["modules"]


async def test_integration_clients(platform):
    reseller = await make_reseller(platform)
    operator = await operator_headers(platform)
    async with client(platform) as http:
        bad = await http.post(
            "/api/v1/clients",
            json={"name": "Billing sync", "scopes": ["everything"]},
            headers=reseller.admin_headers,
        )
        assert bad.status_code == 422 and "scopes must be some of" in bad.json()["detail"]
        nameless = await http.post(
            "/api/v1/clients", json={"name": "Ops", "scopes": ["jobs:read"]}, headers=operator
        )
        assert nameless.status_code == 422  # an operator says whose client it is

        made = await http.post(
            "/api/v1/clients",
            json={"name": "Billing sync", "scopes": ["tenants:read", "jobs:read"]},
            headers=reseller.admin_headers,
        )
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        new = made.json()
        assert new["client_secret"].startswith("dpcs_") and new["reseller_id"] == str(reseller.id)

        listed = await http.get("/api/v1/clients", headers=reseller.admin_headers)
        assert new["client_id"] in {c["client_id"] for c in listed.json()}
        assert new["client_secret"] not in listed.text

        token = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": new["client_id"],
                "client_secret": new["client_secret"],
            },
        )
        headers = bearer(token.json()["access_token"])
        tenants = (await http.get("/api/v1/tenants", headers=headers)).json()
        assert [t["slug"] for t in tenants] == [reseller.tenant.slug]
        refused = await http.post(
            f"/api/v1/tenants/{reseller.tenant.slug}/modules",
            json={"modules": ["recall"]},
            headers=headers,
        )
        assert refused.status_code == 403 and "modules:write" in refused.json()["detail"]

        revoked = await http.post(
            f"/api/v1/clients/{new['client_id']}/revoke", headers=reseller.admin_headers
        )
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        after = await http.get("/api/v1/tenants", headers=headers)
        assert after.status_code == 401
        unknown = await http.post("/api/v1/clients/dpc_0000000000000000/revoke", headers=operator)
        assert unknown.status_code == 404
