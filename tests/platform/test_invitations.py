"""Invitations end to end over a real SMTP server: invite, receive the link, accept (new
account or existing one), sign in; and the hostile cases: reused, expired, tampered,
withdrawn tokens, a token of another kind, an invitation of clinic A used on clinic B,
escalation through an invitation, and clinic B's invitations out of A's reach."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from dentalpin.platform._links import issue
from dentalpin.platform._tables import audit_log, invitations, users
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    PASSWORD,
    add_member,
    bearer,
    client,
    host_of,
    make_user,
    session,
)
from tests.platform.mailbox import smtp_server, token_of
from tests.test_cli import Cli

INVITATIONS = "/api/v1/invitations"
ACCEPT = "/api/v1/auth/invitations/accept"
NEW_PASSWORD = "a brand new password"


@pytest.fixture
def mailbox(platform, monkeypatch):
    with smtp_server(platform, monkeypatch) as box:
        yield box


@pytest.fixture
async def clinic(platform):
    tenant = await create_tenant(platform, unique_slug("inv"), modules=["recall"])
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    return tenant, bearer(await session(platform, admin, tenant)), admin


def new_email() -> str:
    return f"invitee-{uuid.uuid4().hex[:8]}@example.es"


async def invite(platform, tenant, token, email, roles=("receptionist",)):
    async with client(platform, host_of(tenant)) as http:
        response = await http.post(
            INVITATIONS, json={"email": email, "roles": list(roles)}, headers=token
        )
    assert response.status_code == 201, response.text
    return response.json()


async def accept(platform, host, token, **extra):
    async with client(platform, host) as http:
        return await http.post(ACCEPT, json={"token": token, **extra})


async def actions(platform, tenant) -> list[str]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_log.c.action).where(audit_log.c.tenant_id == tenant.id)
        )
        return list(rows.scalars())


async def test_invite_receive_accept_and_sign_in(platform, mailbox, clinic):
    tenant, admin, admin_user = clinic
    email = new_email()
    created = await invite(platform, tenant, admin, email.upper(), ["receptionist", "dentist"])
    assert created["email"] == email and created["state"] == "pending"
    assert created["roles"] == ["dentist", "receptionist"] and created["mail_sent"] is True
    message = await mailbox.wait_for(email)
    assert tenant.name in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    assert f"http://{tenant.slug}.localhost:8000/invitation#token=" in text
    assert admin_user.email in text  # who invites
    token = token_of(message)

    accepted = await accept(platform, host_of(tenant), token, password=NEW_PASSWORD, name="Eva")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {
        "tenant": tenant.slug,
        "email": email,
        "roles": ["dentist", "receptionist"],
        "account_created": True,
    }
    async with client(platform) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": email, "password": NEW_PASSWORD, "tenant": tenant.slug},
        )
        assert login.status_code == 200, login.text
        me = (await http.get("/api/v1/me", headers=bearer(login.json()["access_token"]))).json()
    assert me["roles"] == ["dentist", "receptionist"] and me["user"]["name"] == "Eva"
    async with platform.db.engine.connect() as conn:
        verified = await conn.scalar(
            select(users.c.email_verified_at).where(users.c.email == email)
        )
    assert verified is not None  # the link proved the address
    async with client(platform, host_of(tenant)) as http:
        listed = (await http.get(INVITATIONS, headers=admin)).json()
    assert [i["state"] for i in listed if i["email"] == email] == ["accepted"]
    assert {"invitation.created", "invitation.accepted", "membership.added"} <= set(
        await actions(platform, tenant)
    )


async def test_an_invitation_works_once(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    email = new_email()
    await invite(platform, tenant, admin, email)
    token = await mailbox.token_for(email)
    assert (await accept(platform, "localhost", token, password=NEW_PASSWORD)).status_code == 200
    again = await accept(platform, "localhost", token, password="yet another password")
    assert again.status_code == 400
    assert again.json()["type"].endswith("/invalid-link")
    assert "already used" in again.json()["detail"]


async def test_an_existing_account_is_linked_as_it_is(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    existing = await make_user(platform)
    await invite(platform, tenant, admin, existing.email, ["hygienist"])
    token = await mailbox.token_for(existing.email)
    refused = await accept(platform, host_of(tenant), token, password="taking it over!!")
    assert refused.status_code == 422 and "already exists" in refused.json()["detail"]
    linked = await accept(platform, host_of(tenant), token)
    assert linked.status_code == 200 and linked.json()["account_created"] is False
    async with client(platform) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": existing.email, "password": PASSWORD, "tenant": tenant.slug},
        )
    assert login.status_code == 200, login.text  # the password is still their own


async def test_a_new_account_needs_a_good_password(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    email = new_email()
    await invite(platform, tenant, admin, email)
    token = await mailbox.token_for(email)
    missing = await accept(platform, host_of(tenant), token)
    assert missing.status_code == 422 and "choose a password" in missing.json()["detail"]
    short = await accept(platform, host_of(tenant), token, password="short")
    assert short.status_code == 422
    assert (
        await accept(platform, host_of(tenant), token, password=NEW_PASSWORD)
    ).status_code == 200


async def test_tampered_and_foreign_tokens_are_refused(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    email = new_email()
    await invite(platform, tenant, admin, email)
    token = await mailbox.token_for(email)
    row_id, expiry, nonce, signature = token.split(".")
    later = str(int(expiry) + 3600)
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for forged in (
        f"{row_id}.{later}.{nonce}.{signature}",  # a longer life
        f"{row_id}.{expiry}.{nonce}.{flipped}",
        f"{uuid.uuid4().hex}.{expiry}.{nonce}.{signature}",  # another invitation
        token + "x",
        "not-a-token",
    ):
        response = await accept(platform, host_of(tenant), forged, password=NEW_PASSWORD)
        assert response.status_code == 400, (forged, response.text)
        assert "not valid" in response.json()["detail"]
    # A correctly signed token of another kind (a password reset) is no invitation.
    other = issue(platform.settings, "password_reset", uuid.UUID(hex=row_id), 600)
    response = await accept(platform, host_of(tenant), other.value, password=NEW_PASSWORD)
    assert response.status_code == 400
    # The genuine token still works: none of that spent it.
    assert (
        await accept(platform, host_of(tenant), token, password=NEW_PASSWORD)
    ).status_code == 200


async def test_expired_invitations_are_refused(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    email = new_email()
    created = await invite(platform, tenant, admin, email)
    token = await mailbox.token_for(email)
    async with platform.db.engine.begin() as conn:
        await conn.execute(
            update(invitations)
            .where(invitations.c.id == uuid.UUID(created["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await accept(platform, host_of(tenant), token, password=NEW_PASSWORD)
    assert response.status_code == 400 and "expired" in response.json()["detail"]
    # A token whose own signed expiry has passed is refused before the database is asked.
    stale = issue(platform.settings, "invitation", uuid.UUID(created["id"]), -1)
    response = await accept(platform, host_of(tenant), stale.value, password=NEW_PASSWORD)
    assert response.status_code == 400 and "expired" in response.json()["detail"]
    async with client(platform, host_of(tenant)) as http:
        listed = (await http.get(INVITATIONS, headers=admin)).json()
    assert [i["state"] for i in listed if i["id"] == created["id"]] == ["expired"]


async def test_withdrawn_and_replaced_invitations_stop_working(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    email = new_email()
    first = await invite(platform, tenant, admin, email)
    first_token = await mailbox.token_for(email)
    await invite(platform, tenant, admin, email, ["assistant"])  # replaces the first
    second_token = await mailbox.token_for(email, 2)
    refused = await accept(platform, host_of(tenant), first_token, password=NEW_PASSWORD)
    assert refused.status_code == 400 and "withdrew" in refused.json()["detail"]
    async with client(platform, host_of(tenant)) as http:
        listed = {i["id"]: i["state"] for i in (await http.get(INVITATIONS, headers=admin)).json()}
        assert listed[first["id"]] == "revoked"
        second_id = next(i for i, s in listed.items() if s == "pending")
        deleted = await http.delete(f"{INVITATIONS}/{second_id}", headers=admin)
        assert deleted.status_code == 204
    refused = await accept(platform, host_of(tenant), second_token, password=NEW_PASSWORD)
    assert refused.status_code == 400
    assert "invitation.revoked" in await actions(platform, tenant)


async def test_an_invitation_of_clinic_a_does_not_open_clinic_b(platform, mailbox, clinic):
    tenant_a, admin_a, _ = clinic
    tenant_b = await create_tenant(platform, unique_slug("inv-b"))
    email = new_email()
    await invite(platform, tenant_a, admin_a, email)
    token = await mailbox.token_for(email)
    on_b = await accept(platform, host_of(tenant_b), token, password=NEW_PASSWORD)
    assert on_b.status_code == 403 and "another clinic" in on_b.json()["detail"]
    async with platform.db.engine.connect() as conn:
        assert await conn.scalar(select(users.c.id).where(users.c.email == email)) is None
    assert (
        await accept(platform, host_of(tenant_a), token, password=NEW_PASSWORD)
    ).status_code == 200
    async with client(platform) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": email, "password": NEW_PASSWORD, "tenant": tenant_b.slug},
        )
    assert login.status_code == 403  # a member of A only


async def test_clinic_b_invitations_are_out_of_reach_of_a(platform, mailbox, clinic):
    tenant_a, admin_a, _ = clinic
    tenant_b = await create_tenant(platform, unique_slug("inv-b"))
    admin_b = await make_user(platform)
    await add_member(platform, tenant_b, admin_b, ["admin"])
    token_b = bearer(await session(platform, admin_b, tenant_b))
    email = new_email()
    of_b = await invite(platform, tenant_b, token_b, email)
    async with client(platform, host_of(tenant_a)) as http:
        listed = (await http.get(INVITATIONS, headers=admin_a)).json()
        assert email not in str(listed)
        gone = await http.delete(f"{INVITATIONS}/{of_b['id']}", headers=admin_a)
        assert gone.status_code == 404
    async with client(platform) as http:  # A's token on B's host
        crossed = await http.get(INVITATIONS, headers={**admin_a, "host": host_of(tenant_b)})
        assert crossed.status_code == 403 and email not in crossed.text
        crossed = await http.post(
            INVITATIONS,
            json={"email": new_email(), "roles": ["admin"]},
            headers={**admin_a, "host": host_of(tenant_b)},
        )
        assert crossed.status_code == 403
    async with client(platform, host_of(tenant_b)) as http:
        listed = (await http.get(INVITATIONS, headers=token_b)).json()
    assert [i["state"] for i in listed if i["id"] == of_b["id"]] == ["pending"]


async def test_nobody_invites_into_more_than_they_hold(platform, mailbox, clinic):
    tenant, admin, _ = clinic
    async with client(platform, host_of(tenant)) as http:
        created = await http.post(
            "/api/v1/roles",
            json={"name": "hr", "permissions": ["platform.member.manage"]},
            headers=admin,
        )
        assert created.status_code == 201, created.text
    hr_user = await make_user(platform)
    await add_member(platform, tenant, hr_user, ["hr"])
    hr = bearer(await session(platform, hr_user, tenant))
    email = new_email()
    async with client(platform, host_of(tenant)) as http:
        escalate = await http.post(
            INVITATIONS, json={"email": email, "roles": ["admin"]}, headers=hr
        )
        assert escalate.status_code == 403, escalate.text
        unknown = await http.post(INVITATIONS, json={"email": email, "roles": ["boss"]}, headers=hr)
        assert unknown.status_code == 422 and "no role 'boss'" in unknown.json()["detail"]
        member = await http.post(
            INVITATIONS, json={"email": hr_user.email, "roles": ["hr"]}, headers=hr
        )
        assert member.status_code == 409 and "already a member" in member.json()["detail"]
    assert mailbox.to(email) == []


async def test_cli_invites_over_smtp(platform, mailbox, clinic, tmp_path):
    tenant, _, _ = clinic
    cli = Cli(platform, tmp_path)
    cli.env.update(
        DENTALPIN_SMTP_HOST="127.0.0.1",
        DENTALPIN_SMTP_PORT=str(mailbox.port),
        DENTALPIN_SMTP_SECURITY="none",
    )
    email = new_email()
    result = cli("members", "invite", tenant.slug, email, "--role", "receptionist")
    assert (
        f"invited {email}" in result.output and f"smtp://127.0.0.1:{mailbox.port}" in result.output
    )
    token = await mailbox.token_for(email)
    assert (
        await accept(platform, host_of(tenant), token, password=NEW_PASSWORD)
    ).status_code == 200
    refused = cli("members", "invite", tenant.slug, email, "--role", "receptionist", code=1)
    assert "already a member" in refused.output
    missing = cli("members", "invite", "no-such-clinic", new_email(), "--role", "admin", code=1)
    assert "no active clinic" in missing.output


async def test_cli_without_smtp_writes_the_mail_folder(platform, clinic, tmp_path):
    tenant, _, _ = clinic
    cli = Cli(platform, tmp_path)
    cli.env.pop("DENTALPIN_SMTP_HOST", None)
    email = new_email()
    result = cli("members", "invite", tenant.slug, email, "--role", "dentist")
    folder = str(platform.settings.mail_dir)
    assert folder in result.output.replace(" ", "")
    written = [p for p in platform.settings.mail_dir.glob("*.eml") if email in p.read_text()]
    assert len(written) == 1
