"""Support grants: a clinic admin lets an operator or a reseller admin in, for a while,
with chosen roles; checked on every request (never from the token), second factor
required, every access audited; revoked or expired grants stop working at once; and the
hostile cases: an admin of A granting access to B, escalation, support widening itself."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from dentalpin.platform._audit import CLI
from dentalpin.platform._clients import add_reseller_admin, create_reseller
from dentalpin.platform._tables import audit_log, support_grants
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    add_member,
    bearer,
    client,
    code,
    host_of,
    make_user,
    session,
)
from tests.platform.mailbox import smtp_server
from tests.test_cli import Cli

GRANTS = "/api/v1/support-grants"
AUDIT = "/api/v1/audit"
REMINDERS = "/api/v1/recall/reminders"


@pytest.fixture
def mailbox(platform, monkeypatch):
    with smtp_server(platform, monkeypatch) as box:
        yield box


@pytest.fixture
async def clinic(platform):
    tenant = await create_tenant(platform, unique_slug("sup"), modules=["recall"])
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    return tenant, bearer(await session(platform, admin, tenant))


async def reseller_admin(platform, tenant=None):
    """An admin of a new reseller, which owns `tenant` when one is given."""
    user = await make_user(platform)
    name = f"Reseller {secrets.token_hex(3)}"
    async with platform.db.engine.begin() as conn:
        reseller = await create_reseller(conn, name, ctx=CLI)
        await add_reseller_admin(conn, name, user.email, ctx=CLI)
        if tenant is not None:
            await conn.execute(
                text("update platform.tenants set reseller_id = :r where id = :t"),
                {"r": reseller["id"], "t": tenant.id},
            )
    return user


def in_hours(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


async def grant(platform, tenant, token, email, code=201, **extra):
    async with client(platform, host_of(tenant)) as http:
        response = await http.post(
            GRANTS, json={"email": email, "expires_at": in_hours(2), **extra}, headers=token
        )
    assert response.status_code == code, response.text
    return response.json()


async def audit_actions(platform, tenant) -> list[tuple[str, str | None]]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_log.c.action, audit_log.c.target)
            .where(audit_log.c.tenant_id == tenant.id)
            .order_by(audit_log.c.id)
        )
        return [(r.action, r.target) for r in rows]


async def test_an_operator_helps_read_only_and_every_access_is_audited(platform, mailbox, clinic):
    tenant, admin = clinic
    operator = await make_user(platform, operator=True)
    created = await grant(platform, tenant, admin, operator.email, reason="ticket 42")
    assert created["roles"] == ["support"] and created["state"] == "active"
    assert created["grantee"] == operator.email and created["mail_sent"] is True
    told = (await mailbox.wait_for(operator.email)).get_body(("plain",)).get_content()
    assert tenant.slug in told and "audit log" in told

    helper = bearer(await session(platform, operator, tenant))
    async with client(platform, host_of(tenant)) as http:
        me = (await http.get("/api/v1/me", headers=helper)).json()
        assert me["roles"] == ["support"] and me["tenant"]["slug"] == tenant.slug
        assert me["support_grant"] == created["id"]
        assert me["memberships"] == [{"slug": tenant.slug, "support": True}]
        assert (await http.get(AUDIT, headers=helper)).status_code == 200
        assert (await http.get("/api/v1/members", headers=helper)).status_code == 403
        assert (await http.get(REMINDERS, headers=helper)).status_code == 403  # no patient data
    seen = await audit_actions(platform, tenant)
    assert ("support.granted", operator.email) in seen
    accesses = [target for action, target in seen if action == "support.access"]
    assert accesses == [
        "GET /api/v1/me",
        f"GET {AUDIT}",
        "GET /api/v1/members",
        f"GET {REMINDERS}",
    ]


async def test_support_needs_a_second_factor(platform, clinic):
    tenant, admin = clinic
    operator = await make_user(platform, operator=True)
    await grant(platform, tenant, admin, operator.email)
    no_mfa = bearer(await session(platform, operator, tenant, mfa=False))
    async with client(platform, host_of(tenant)) as http:
        refused = await http.get(AUDIT, headers=no_mfa)
    assert refused.status_code == 403 and "second factor" in refused.json()["detail"]


async def test_a_support_sign_in_asks_for_the_second_factor(platform, clinic):
    tenant, admin = clinic
    helper = await reseller_admin(platform, tenant)
    await grant(platform, tenant, admin, helper.email)
    async with client(platform) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={
                "email": helper.email,
                "password": "correct horse battery staple",
                "tenant": tenant.slug,
            },
        )
    assert login.status_code == 401 and login.json()["type"].endswith("mfa-enrolment-required")


async def test_support_is_entered_by_naming_the_clinic_with_a_second_factor(platform, clinic):
    tenant, admin = clinic
    helper = await reseller_admin(platform, tenant)
    await grant(platform, tenant, admin, helper.email)
    credentials = {"email": helper.email, "password": "correct horse battery staple"}
    async with client(platform) as http:
        challenge = await http.post("/api/v1/auth/login", json=credentials)
        enrol_token = challenge.json()["mfa_token"]
        secret = (
            await http.post("/api/v1/auth/mfa/enrol", json={"mfa_token": enrol_token})
        ).json()["secret"]
        platform_session = await http.post(
            "/api/v1/auth/mfa/enrol/confirm",
            json={"mfa_token": enrol_token, "code": code(secret)},
        )
        assert platform_session.status_code == 200, platform_session.text
        assert "tenant" not in platform_session.json()  # not into the clinic by default
        challenge = await http.post(
            "/api/v1/auth/login", json={**credentials, "tenant": tenant.slug}
        )
        assert challenge.json()["type"].endswith("/mfa-required")
        tokens = await http.post(
            "/api/v1/auth/mfa",
            json={"mfa_token": challenge.json()["mfa_token"], "code": code(secret, 1)},
        )
        assert tokens.status_code == 200, tokens.text
        assert tokens.json()["tenant"] == tenant.slug
        helper_token = bearer(tokens.json()["access_token"])
        audit = await http.get(AUDIT, headers={**helper_token, "host": host_of(tenant)})
        assert audit.status_code == 200
        assert any(e["action"] == "support.granted" for e in audit.json())


async def test_revoking_ends_access_at_once(platform, clinic):
    tenant, admin = clinic
    helper = await reseller_admin(platform, tenant)
    created = await grant(platform, tenant, admin, helper.email, roles=["receptionist"])
    pair = await session(platform, helper, tenant)
    async with client(platform, host_of(tenant)) as http:
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 200
        revoked = await http.delete(f"{GRANTS}/{created['id']}", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        after = await http.get(REMINDERS, headers=bearer(pair))
        assert after.status_code == 401 and "session has ended" in after.json()["detail"]
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token}
        )
        assert refreshed.status_code == 401
        listed = (await http.get(GRANTS, headers=admin)).json()
    assert [g["state"] for g in listed if g["id"] == created["id"]] == ["revoked"]
    assert ("support.revoked", helper.email) in await audit_actions(platform, tenant)


async def test_a_grantee_who_stops_being_the_resellers_admin_loses_the_grant_at_once(
    platform, clinic
):
    tenant, admin = clinic
    helper = await reseller_admin(platform, tenant)
    await grant(platform, tenant, admin, helper.email, roles=["receptionist"])
    pair = await session(platform, helper, tenant)
    async with client(platform, host_of(tenant)) as http:
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 200
        async with platform.db.engine.begin() as conn:  # they left the reseller
            await conn.execute(
                text("delete from platform.reseller_admins where user_id = :u"), {"u": helper.id}
            )
        after = await http.get(REMINDERS, headers=bearer(pair))
        assert after.status_code in (401, 403), after.text
        listed = (await http.get(GRANTS, headers=admin)).json()
        assert [g["state"] for g in listed if g["grantee"] == helper.email] == ["lapsed"]
    async with client(platform) as http:  # and the clinic is no longer among theirs
        credentials = {"email": helper.email, "password": "correct horse battery staple"}
        entered = await http.post("/api/v1/auth/login", json={**credentials, "tenant": tenant.slug})
    assert entered.status_code == 403, entered.text
    assert entered.json()["type"].endswith("/not-a-member")


async def test_an_expired_grant_stops_working_immediately(platform, clinic):
    tenant, admin = clinic
    operator = await make_user(platform, operator=True)
    created = await grant(platform, tenant, admin, operator.email)
    pair = await session(platform, operator, tenant)
    async with client(platform, host_of(tenant)) as http:
        assert (await http.get(AUDIT, headers=bearer(pair))).status_code == 200
        async with platform.db.engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(seconds=1)
            await conn.execute(
                update(support_grants)
                .where(support_grants.c.id == uuid.UUID(created["id"]))
                .values(created_at=past - timedelta(hours=1), expires_at=past)
            )
        expired = await http.get(AUDIT, headers=bearer(pair))  # same, unexpired access token
        assert expired.status_code == 403, expired.text
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token}
        )
        assert refreshed.status_code == 403
        listed = (await http.get(GRANTS, headers=admin)).json()
    assert [g["state"] for g in listed if g["id"] == created["id"]] == ["expired"]


async def test_an_admin_of_a_cannot_grant_or_touch_access_to_b(platform, clinic):
    tenant_a, admin_a = clinic
    tenant_b = await create_tenant(platform, unique_slug("sup-b"))
    admin_b_user = await make_user(platform)
    await add_member(platform, tenant_b, admin_b_user, ["admin"])
    admin_b = bearer(await session(platform, admin_b_user, tenant_b))
    operator = await make_user(platform, operator=True)
    async with client(platform) as http:
        crossed = await http.post(
            GRANTS,
            json={"email": operator.email, "expires_at": in_hours(1)},
            headers={**admin_a, "host": host_of(tenant_b)},
        )
        assert crossed.status_code == 403
    of_b = await grant(platform, tenant_b, admin_b, operator.email)
    async with client(platform, host_of(tenant_a)) as http:
        assert of_b["id"] not in (await http.get(GRANTS, headers=admin_a)).text
        gone = await http.delete(f"{GRANTS}/{of_b['id']}", headers=admin_a)
        assert gone.status_code == 404
    # A grant for A does not open B, whatever host the helper tries.
    await grant(platform, tenant_a, admin_a, operator.email)
    on_a = bearer(await session(platform, operator, tenant_a))
    async with client(platform) as http:
        on_b = await http.get(AUDIT, headers={**on_a, "host": host_of(tenant_b)})
        assert on_b.status_code == 403
    async with client(platform, host_of(tenant_b)) as http:
        listed = (await http.get(GRANTS, headers=admin_b)).json()
    assert [g["state"] for g in listed if g["id"] == of_b["id"]] == ["active"]


async def test_grants_are_for_operators_and_resellers_and_bounded(platform, clinic):
    tenant, admin = clinic
    staff = await make_user(platform)
    refused = await grant(platform, tenant, admin, staff.email, code=422)
    assert "operators and resellers' admins" in refused["detail"]
    # Another reseller's admin has no business in this clinic.
    stranger = await reseller_admin(platform)
    refused = await grant(platform, tenant, admin, stranger.email, code=422)
    assert "administers another reseller" in refused["detail"]
    operator = await make_user(platform, operator=True)
    async with client(platform, host_of(tenant)) as http:
        for expires_at in (
            in_hours(24 * 7 + 1),
            in_hours(-1),
            datetime.now().replace(tzinfo=None).isoformat(),  # no time zone
        ):
            response = await http.post(
                GRANTS, json={"email": operator.email, "expires_at": expires_at}, headers=admin
            )
            assert response.status_code == 422, (expires_at, response.text)
        missing = await http.post(GRANTS, json={"email": operator.email}, headers=admin)
        assert missing.status_code == 422
    await grant(platform, tenant, admin, operator.email)
    twice = await grant(platform, tenant, admin, operator.email, code=409)
    assert "revoke it first" in twice["detail"]
    member = await make_user(platform, operator=True)
    await add_member(platform, tenant, member, ["dentist"])
    assert "member" in (await grant(platform, tenant, admin, member.email, code=409))["detail"]


async def test_nobody_grants_more_than_they_hold_and_support_cannot_widen_itself(platform, clinic):
    tenant, admin = clinic
    async with client(platform, host_of(tenant)) as http:
        created = await http.post(
            "/api/v1/roles",
            json={"name": "it_desk", "permissions": ["platform.support.manage"]},
            headers=admin,
        )
        assert created.status_code == 201
    desk_user = await make_user(platform)
    await add_member(platform, tenant, desk_user, ["it_desk"])
    desk = bearer(await session(platform, desk_user, tenant))
    operator = await make_user(platform, operator=True)
    escalate = await grant(platform, tenant, desk, operator.email, code=403, roles=["admin"])
    assert "you do not hold" in escalate["detail"]
    # Even with the admin role, support cannot open ways in that outlive the grant.
    await grant(platform, tenant, admin, operator.email, roles=["admin"])
    helper = bearer(await session(platform, operator, tenant))
    async with client(platform, host_of(tenant)) as http:
        invite = await http.post(
            "/api/v1/invitations",
            json={"email": "friend@example.es", "roles": ["admin"]},
            headers=helper,
        )
        assert invite.status_code == 403 and "support access" in invite.json()["detail"]
        other = await make_user(platform, operator=True)
        regrant = await http.post(
            GRANTS, json={"email": other.email, "expires_at": in_hours(1)}, headers=helper
        )
        assert regrant.status_code == 403
        add = await http.post(
            "/api/v1/members", json={"email": other.email, "roles": ["admin"]}, headers=helper
        )
        assert add.status_code == 403
        assert (await http.get(AUDIT, headers=helper)).status_code == 200


async def test_cli_grant_list_revoke(platform, clinic, tmp_path):
    tenant, _ = clinic
    operator = await make_user(platform, operator=True)
    cli = Cli(platform, tmp_path)
    granted = cli("support", "grant", tenant.slug, operator.email, "--hours", "4")
    assert f"for {operator.email}" in granted.output and "as support" in granted.output
    listed = cli("support", "list", tenant.slug, "--json").json()
    (entry,) = [g for g in listed if g["grantee"] == operator.email]
    assert entry["state"] == "active"
    too_long = cli("support", "grant", tenant.slug, operator.email, "--hours", "500", code=1)
    assert "at most 168 hours" in too_long.output
    cli("support", "revoke", tenant.slug, entry["id"])
    listed = cli("support", "list", tenant.slug, "--json").json()
    assert [g["state"] for g in listed if g["id"] == entry["id"]] == ["revoked"]
    assert "GRANT_ID" in cli("support", "revoke", tenant.slug, "nope", code=2).output
    missing = cli("support", "revoke", tenant.slug, str(uuid.uuid4()), code=1)
    assert "no such support grant" in missing.output
