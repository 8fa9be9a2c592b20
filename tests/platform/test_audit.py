"""The audit log: append-only in PostgreSQL, kept when a tenant is archived, readable by the
clinic's admins for their clinic only; every request carries a request id."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from dentalpin.platform._tables import audit_log
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    PASSWORD,
    add_member,
    bearer,
    client,
    host_of,
    make_user,
    run_job,
    session,
)


async def test_the_audit_log_refuses_update_delete_and_truncate(platform):
    user = await make_user(platform)  # writes a user.created entry
    async with platform.db.engine.connect() as conn:
        count = await conn.scalar(select(audit_log.c.id).where(audit_log.c.target == user.email))
        assert count is not None
    for statement in (
        "update platform.audit_log set action = 'nothing' where target = :t",
        "delete from platform.audit_log where target = :t",
        "truncate platform.audit_log",
    ):
        async with platform.db.engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement), {"t": user.email})
            await conn.rollback()
    async with platform.db.engine.connect() as conn:
        actions = list(
            (
                await conn.execute(
                    select(audit_log.c.action).where(audit_log.c.target == user.email)
                )
            ).scalars()
        )
    assert actions == ["user.created"]


async def test_admins_read_their_clinics_security_events_with_request_ids(platform):
    tenant = await create_tenant(platform, unique_slug("audit"))
    other = await create_tenant(platform, unique_slug("audit-other"))
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    clerk = await make_user(platform)
    await add_member(platform, tenant, clerk, ["dentist"])
    stranger = await make_user(platform)
    await add_member(platform, other, stranger, ["dentist"])
    headers = bearer(await session(platform, admin, tenant))
    async with client(platform, host_of(tenant), ip="198.51.100.9") as http:
        response = await http.post(
            "/api/v1/auth/login",
            json={"email": clerk.email, "password": "wrong-wrong-wrong"},
            headers={"x-request-id": "req-audit-0001"},
        )
        assert response.status_code == 401
        assert response.headers["x-request-id"] == "req-audit-0001"
        generated = await http.post(
            "/api/v1/auth/login", json={"email": clerk.email, "password": PASSWORD}
        )
        assert generated.status_code == 200
        assert len(generated.headers["x-request-id"]) >= 16
        hostile = await http.get("/healthz", headers={"x-request-id": "bad id\n with newline"})
        assert hostile.headers["x-request-id"] != "bad id\n with newline"

        changed = await http.put(
            f"/api/v1/members/{clerk.id}",
            json={"roles": ["hygienist"]},
            headers={**headers, "x-request-id": "req-audit-0002"},
        )
        assert changed.status_code == 200, changed.text

        entries = (await http.get("/api/v1/audit", headers=headers)).json()
        page = (await http.get("/api/v1/audit?limit=1", headers=headers)).json()
        older = (
            await http.get(f"/api/v1/audit?limit=1&before={page[0]['id']}", headers=headers)
        ).json()
        only = (await http.get("/api/v1/audit?action=membership.changed", headers=headers)).json()
    by_action = {e["action"]: e for e in entries}
    change = by_action["membership.changed"]
    assert change["actor"] == admin.email and change["target"] == str(clerk.id)
    assert change["request_id"] == "req-audit-0002" and change["ip"] == "198.51.100.9"
    assert change["details"]["roles"] == ["hygienist"]
    assert change["details"]["previous"] == ["dentist"]
    assert "login.succeeded" in by_action
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert len(page) == 1 and older[0]["id"] < page[0]["id"]
    assert {e["action"] for e in only} == {"membership.changed"}
    # Nothing of the other clinic.
    assert stranger.email not in str(entries) and str(stranger.id) not in str(entries)


async def test_failed_logins_are_recorded_with_request_id_and_address(platform):
    user = await make_user(platform)
    async with client(platform, ip="203.0.113.5") as http:
        await http.post(
            "/api/v1/auth/login",
            json={"email": user.email, "password": "nope-nope-nope"},
            headers={"x-request-id": "req-failed-login-1"},
        )
    async with platform.db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(audit_log).where(audit_log.c.request_id == "req-failed-login-1")
            )
        ).one()
    assert row.action == "login.failed" and row.ip == "203.0.113.5" and row.target == user.email
    assert "nope" not in str(row.details)  # never the password


async def test_audit_entries_survive_the_tenant_being_archived(platform):
    tenant = await create_tenant(platform, unique_slug("audit-arch"))
    user = await make_user(platform)
    await add_member(platform, tenant, user, ["dentist"])
    job = await run_job(platform, "tenant.archive", tenant)
    assert job.state == "succeeded", job.error
    async with platform.db.engine.connect() as conn:
        actions = list(
            (
                await conn.execute(
                    select(audit_log.c.action).where(audit_log.c.tenant_id == tenant.id)
                )
            ).scalars()
        )
    assert "membership.added" in actions
    # The archived clinic's members cannot sign into it any more.
    async with client(platform) as http:
        response = await http.post(
            "/api/v1/auth/login",
            json={"email": user.email, "password": PASSWORD, "tenant": tenant.slug},
        )
    assert response.status_code == 403
