"""Tenant roles: seeded from the installed modules, following install / uninstall / restore,
custom roles limited to installed modules, and escalation attempts refused."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, insert, select

from dentalpin.platform._audit import CLI
from dentalpin.platform._errors import Conflict
from dentalpin.platform._identity import set_membership
from dentalpin.platform._roles import (
    BUILTIN_ROLES,
    PLATFORM_PERMISSIONS,
    seeded_grants,
    sync_roles,
)
from dentalpin.platform._tables import audit_log, role_permissions, roles
from dentalpin.tenants import create_tenant, module_states
from tests.conftest import unique_slug
from tests.platform.identity import (
    add_member,
    bearer,
    client,
    host_of,
    make_user,
    run_job,
    session,
)

ROLES = "/api/v1/roles"
MEMBERS = "/api/v1/members"
PEOPLE = "/api/v1/fx_people/people"
REMINDERS = "/api/v1/recall/reminders"


async def grants(platform, tenant) -> dict[str, set[str]]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(role_permissions.c.role, role_permissions.c.permission).where(
                role_permissions.c.tenant_id == tenant.id
            )
        )
        found: dict[str, set[str]] = {}
        for role, permission in rows:
            found.setdefault(role, set()).add(permission)
        return found


async def test_builtin_roles_are_seeded_from_the_installed_modules(platform):
    tenant = await create_tenant(platform, unique_slug("roles"), modules=["recall"])
    held = await grants(platform, tenant)
    async with platform.db.engine.connect() as conn:
        installed = [
            m
            for m, s in (await module_states(conn, tenant.id)).items()
            if s["state"] == "installed"
        ]
    assert {"fx_people", "patients", "recall"} <= set(installed)  # recall pulled in patients
    assert held["admin"] == set(PLATFORM_PERMISSIONS) | {
        f"{m}.{p}" for m in installed for p in platform.registry.get(m).manifest.permissions
    }
    mine = {p for p in held["receptionist"] if p.split(".")[0] in {"fx_people", "recall"}}
    assert mine == {
        "fx_people.person.read",
        "recall.reminder.read",
        "recall.reminder.write",
    }
    assert "patients.patient.read" in held["receptionist"]
    assert "patients.alert.read" not in held["receptionist"]
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    async with client(platform) as http:
        body = (
            await http.get(ROLES, headers=bearer(await session(platform, admin, tenant)))
        ).json()
    assert {r["name"] for r in body["roles"]} == set(BUILTIN_ROLES)
    assert all(r["builtin"] for r in body["roles"])
    assert "fx_visits.visit.read" not in body["assignable_permissions"]  # not installed here


async def test_roles_follow_module_install_uninstall_and_restore(platform):
    tenant = await create_tenant(platform, unique_slug("roles-life"))
    clerk = await make_user(platform)
    await add_member(platform, tenant, clerk, ["receptionist"])
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    pair = await session(platform, clerk, tenant)
    async with client(platform, host_of(tenant)) as http:
        response = await http.post(
            ROLES,
            json={"name": "recall_clerk", "permissions": ["recall.reminder.read"]},
            headers=bearer(await session(platform, admin, tenant)),
        )
        assert response.status_code == 422  # recall is not installed yet

        assert (
            await run_job(platform, "lifecycle.install", tenant, modules=["recall"])
        ).state == "succeeded"
        assert "recall.reminder.read" in (await grants(platform, tenant))["receptionist"]
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 200
        response = await http.post(
            ROLES,
            json={"name": "recall_clerk", "permissions": ["recall.reminder.read"]},
            headers=bearer(await session(platform, admin, tenant)),
        )
        assert response.status_code == 201, response.text

        job = await run_job(platform, "lifecycle.uninstall", tenant, module="recall")
        assert job.state == "succeeded", job.error
        held = await grants(platform, tenant)
        assert not any(p.startswith("recall.") for ps in held.values() for p in ps)
        me = (await http.get("/api/v1/me", headers=bearer(pair))).json()
        assert "fx_people.person.read" in me["permissions"]
        assert not any(p.startswith("recall.") for p in me["permissions"])
        assert "recall" not in [n["module"] for n in me["navigation"]]

        job = await run_job(platform, "lifecycle.restore", tenant, module="recall")
        assert job.state == "succeeded", job.error
        assert "recall.reminder.write" in (await grants(platform, tenant))["receptionist"]
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 200
        # The custom role lost the grant with the module; restoring does not bring it back.
        assert "recall_clerk" not in await grants(platform, tenant)


async def test_custom_roles_hold_only_installed_permissions(platform):
    tenant = await create_tenant(platform, unique_slug("roles-custom"), modules=["recall"])
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    headers = bearer(await session(platform, admin, tenant))
    async with client(platform, host_of(tenant)) as http:
        for bad in (
            {"name": "x_role", "permissions": ["fx_visits.visit.read"]},  # not installed
            {"name": "x_role", "permissions": ["nothing.at.all"]},
            {"name": "Bad Name", "permissions": []},
            {"name": "x_role", "permissions": [], "builtin": True},
        ):
            response = await http.post(ROLES, json=bad, headers=headers)
            assert response.status_code == 422, (bad, response.text)
        assert (
            await http.post(ROLES, json={"name": "admin", "permissions": []}, headers=headers)
        ).status_code == 409
        assert (
            await http.put(f"{ROLES}/receptionist", json={"permissions": []}, headers=headers)
        ).status_code == 409
        assert (await http.delete(f"{ROLES}/admin", headers=headers)).status_code == 409

        created = await http.post(
            ROLES,
            json={"name": "front_desk_lite", "permissions": ["fx_people.person.read"]},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        user = await make_user(platform)
        added = await http.post(
            MEMBERS, json={"email": user.email, "roles": ["front_desk_lite"]}, headers=headers
        )
        assert added.status_code == 201, added.text
        member = bearer(await session(platform, user, tenant))
        assert (await http.get(PEOPLE, headers=member)).status_code == 200
        assert (await http.get(REMINDERS, headers=member)).status_code == 403
        changed = await http.put(
            f"{ROLES}/front_desk_lite",
            json={"permissions": ["recall.reminder.read"]},
            headers=headers,
        )
        assert changed.status_code == 200
        assert (await http.get(PEOPLE, headers=member)).status_code == 403
        assert (await http.get(REMINDERS, headers=member)).status_code == 200
        assert (await http.delete(f"{ROLES}/front_desk_lite", headers=headers)).status_code == 204
        assert (await http.get(REMINDERS, headers=member)).status_code == 403
    async with platform.db.engine.connect() as conn:
        actions = set(
            (
                await conn.execute(
                    select(audit_log.c.action).where(audit_log.c.tenant_id == tenant.id)
                )
            ).scalars()
        )
    assert {"role.created", "role.changed", "role.deleted", "membership.added"} <= actions


# Escalation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def two_clinics(platform):
    a = await create_tenant(platform, unique_slug("esc-a"), modules=["recall"])
    b = await create_tenant(platform, unique_slug("esc-b"), modules=["recall"])
    return a, b


async def test_a_receptionist_cannot_grant_herself_admin(platform, two_clinics):
    a, _ = two_clinics
    clerk = await make_user(platform)
    await add_member(platform, a, clerk, ["receptionist"])
    headers = bearer(await session(platform, clerk, a))
    async with client(platform, host_of(a)) as http:
        attempts = [
            http.put(f"{MEMBERS}/{clerk.id}", json={"roles": ["admin"]}, headers=headers),
            http.post(MEMBERS, json={"email": clerk.email, "roles": ["admin"]}, headers=headers),
            http.post(
                ROLES,
                json={"name": "mine", "permissions": list(PLATFORM_PERMISSIONS)},
                headers=headers,
            ),
            http.put(f"{ROLES}/receptionist", json={"permissions": []}, headers=headers),
            http.get("/api/v1/audit", headers=headers),
            http.get(MEMBERS, headers=headers),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 403, response.text
        me = (await http.get("/api/v1/me", headers=headers)).json()
    assert me["roles"] == ["receptionist"]


async def test_a_member_manager_cannot_hand_out_more_than_she_holds(platform, two_clinics):
    a, _ = two_clinics
    admin = await make_user(platform)
    await add_member(platform, a, admin, ["admin"])
    admin_headers = bearer(await session(platform, admin, a))
    async with client(platform, host_of(a)) as http:
        created = await http.post(
            ROLES,
            json={
                "name": "office_manager",
                "permissions": ["platform.member.manage", "fx_people.person.read"],
            },
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        manager = await make_user(platform)
        await add_member(platform, a, manager, ["office_manager"])
        headers = bearer(await session(platform, manager, a))
        newcomer = await make_user(platform)
        # Within what she holds: fine.
        ok = await http.post(
            MEMBERS, json={"email": newcomer.email, "roles": ["office_manager"]}, headers=headers
        )
        assert ok.status_code == 201, ok.text
        # Beyond it: refused, for herself and for others, and she cannot demote the admin.
        for request in (
            http.put(f"{MEMBERS}/{manager.id}", json={"roles": ["admin"]}, headers=headers),
            http.post(MEMBERS, json={"email": newcomer.email, "roles": ["admin"]}, headers=headers),
            http.post(
                MEMBERS, json={"email": newcomer.email, "roles": ["receptionist"]}, headers=headers
            ),
            http.put(f"{MEMBERS}/{admin.id}", json={"roles": ["dentist"]}, headers=headers),
            http.delete(f"{MEMBERS}/{admin.id}", headers=headers),
        ):
            response = await request
            assert response.status_code == 403, response.text
        # And she holds no role.manage: she cannot widen her own role either.
        widen = await http.put(
            f"{ROLES}/office_manager",
            json={"permissions": list(PLATFORM_PERMISSIONS)},
            headers=headers,
        )
        assert widen.status_code == 403


async def test_a_tenant_admin_cannot_reach_another_clinic_or_credentials(platform, two_clinics):
    a, b = two_clinics
    admin_a = await make_user(platform)
    await add_member(platform, a, admin_a, ["admin"])
    member_b = await make_user(platform)
    await add_member(platform, b, member_b, ["receptionist"])
    headers = bearer(await session(platform, admin_a, a))
    async with client(platform) as http:
        # Against B's host: the token is A's.
        for method, path, body in (
            ("GET", MEMBERS, None),
            ("PUT", f"{MEMBERS}/{member_b.id}", {"roles": ["admin"]}),
            ("DELETE", f"{MEMBERS}/{member_b.id}", None),
            ("POST", MEMBERS, {"email": admin_a.email, "roles": ["admin"]}),
            ("POST", ROLES, {"name": "sneaky", "permissions": []}),
            ("GET", "/api/v1/audit", None),
        ):
            response = await http.request(
                method, path, json=body, headers={**headers, "host": host_of(b)}
            )
            assert response.status_code == 403, (method, path, response.text)
        # On A's own host, B's member is not A's to change.
        response = await http.put(
            f"{MEMBERS}/{member_b.id}",
            json={"roles": ["admin"]},
            headers={**headers, "host": host_of(a)},
        )
        assert response.status_code == 404
        # No way to set someone else's password or second factor through memberships.
        response = await http.put(
            f"{MEMBERS}/{member_b.id}",
            json={"roles": ["receptionist"], "password": "owned-owned-owned"},
            headers=headers,
        )
        assert response.status_code == 422
        # /auth/password changes the caller's own password only, and needs it.
        response = await http.post(
            "/api/v1/auth/password",
            json={"current_password": "guess-guess", "new_password": "owned-owned-owned"},
            headers=headers,
        )
        assert response.status_code == 401
        members_a = (await http.get(MEMBERS, headers=headers)).json()
    assert member_b.email not in {m["email"] for m in members_a}
    async with client(platform, host_of(b)) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": member_b.email, "password": "correct horse battery staple"},
        )
        assert login.status_code == 200


async def test_the_last_admin_cannot_be_removed(platform):
    tenant = await create_tenant(platform, unique_slug("last-admin"))
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    headers = bearer(await session(platform, admin, tenant))
    async with client(platform, host_of(tenant)) as http:
        response = await http.put(
            f"{MEMBERS}/{admin.id}", json={"roles": ["dentist"]}, headers=headers
        )
        assert response.status_code == 409
        assert (await http.delete(f"{MEMBERS}/{admin.id}", headers=headers)).status_code == 409
    async with platform.db.engine.begin() as conn:
        with pytest.raises(Conflict):
            await set_membership(conn, platform.registry, tenant.id, admin.id, ["dentist"], ctx=CLI)


async def test_membership_roles_and_locations_are_validated(platform):
    tenant = await create_tenant(platform, unique_slug("mem-val"))
    user = await make_user(platform)
    async with platform.db.engine.begin() as conn:
        from dentalpin.platform._errors import InvalidInput

        for roles, locations in ((["no_such_role"], []), ([], []), (["dentist"], ["bad id!"])):
            with pytest.raises(InvalidInput):
                await set_membership(
                    conn, platform.registry, tenant.id, user.id, roles, locations, ctx=CLI
                )
    await add_member(platform, tenant, user, ["dentist"], ["madrid-centro", str(uuid.uuid4())])
    me = None
    async with client(platform, host_of(tenant)) as http:
        me = (
            await http.get("/api/v1/me", headers=bearer(await session(platform, user, tenant)))
        ).json()
    assert "madrid-centro" in me["location_ids"]


async def test_archive_strips_and_tenant_restore_reseeds_roles(platform):
    from dentalpin.tenants import restore_tenant

    tenant = await create_tenant(platform, unique_slug("roles-arch"), modules=["recall"])
    clerk = await make_user(platform)
    await add_member(platform, tenant, clerk, ["receptionist"])
    pair = await session(platform, clerk, tenant)
    job = await run_job(platform, "tenant.archive", tenant)
    assert job.state == "succeeded", job.error
    assert not any((await grants(platform, tenant)).get("receptionist", set()))
    async with client(platform) as http:
        # The archived clinic's sessions are over.
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code in (403, 404)
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token}
        )
        assert refreshed.status_code == 403
    restored = await restore_tenant(platform, job.result["archive_id"])
    assert "recall.reminder.read" in (await grants(platform, restored))["receptionist"]
    async with client(platform, host_of(restored)) as http:
        login = await http.post(
            "/api/v1/auth/login",
            json={"email": clerk.email, "password": "correct horse battery staple"},
        )
        assert login.status_code == 200, login.text
        reminders = await http.get(REMINDERS, headers=bearer(login.json()["access_token"]))
        assert reminders.status_code == 200


async def test_roles_follow_a_module_upgrade_that_changes_its_grants(platform, tmp_path):
    from dentalpin.tenants import upgrade_fleet
    from tests.tenants.factory import build_module, platform_with

    permissions = {"note.read": "Read notes", "note.write": "Write notes"}
    old = build_module(
        tmp_path / "v1",
        "noted",
        [],
        version="1.0.0",
        permissions=permissions,
        role_grants={"admin": "*", "dentist": ("note.read",)},
    )
    p1 = platform_with(platform, old)
    tenant = await create_tenant(p1, unique_slug("regrant"), modules=["noted"])
    await p1.close()
    assert "noted.note.write" not in (await grants(platform, tenant))["dentist"]

    new = build_module(
        tmp_path / "v2",
        "noted",
        [],
        version="1.1.0",
        permissions=permissions,
        role_grants={"admin": "*", "dentist": ("note.read", "note.write")},
    )
    p2 = platform_with(platform, new)
    try:
        report = await upgrade_fleet(p2)
        assert tenant.slug in report.upgraded
        assert "noted.note.write" in (await grants(p2, tenant))["dentist"]
    finally:
        await p2.close()


async def test_sync_roles_keeps_the_rules_of_seeded_grants(platform):
    """The one-statement sync against the same offer filtered in Python (`seeded_grants`):
    system roles hold exactly the installed grants, a clinic's custom role keeps a system
    role's name and is never granted to, custom roles lose uninstalled modules'
    permissions."""
    tenant = await create_tenant(platform, unique_slug("sync"), modules=["recall"])
    async with platform.db.engine.connect() as conn:
        states = await module_states(conn, tenant.id)
    installed = sorted(m for m, s in states.items() if s["state"] == "installed")
    assert "recall" in installed
    custom = {"fx_people.person.read", "recall.reminder.read", "platform.audit.read"}
    async with platform.db.engine.begin() as conn:
        await conn.execute(delete(roles).where(roles.c.tenant_id == tenant.id))
        await conn.execute(
            insert(roles).values(tenant_id=tenant.id, name="receptionist", builtin=False)
        )
        await conn.execute(
            insert(role_permissions).values(
                [{"tenant_id": tenant.id, "role": "receptionist", "permission": p} for p in custom]
            )
        )
        # Removing recall (as an uninstall's listener announces it, before the row changes).
        await sync_roles(conn, platform.registry, tenant.id, removing=["recall"])

    def expected(modules: list[str]) -> dict[str, set[str]]:
        wanted = seeded_grants(platform.registry, modules)
        del wanted["receptionist"]  # the clinic's own role of that name
        return {role: permissions for role, permissions in wanted.items() if permissions}

    without_recall = [m for m in installed if m != "recall"]
    # The offer's own rules, stated independently of it.
    assert expected(without_recall)["admin"] >= set(PLATFORM_PERMISSIONS)
    assert "platform.audit.read" in expected(without_recall)["support"]
    assert not any(p.startswith("recall.") for ps in expected(without_recall).values() for p in ps)
    assert any(p.startswith("recall.") for ps in expected(installed).values() for p in ps)
    held = await grants(platform, tenant)
    assert held.pop("receptionist") == custom - {"recall.reminder.read"}
    assert held == expected(without_recall)
    async with platform.db.engine.connect() as conn:
        flags = dict(
            (
                await conn.execute(
                    select(roles.c.name, roles.c.builtin).where(roles.c.tenant_id == tenant.id)
                )
            ).all()
        )
    assert flags == {**dict.fromkeys(BUILTIN_ROLES, True), "receptionist": False}

    async with platform.db.engine.begin() as conn:
        await sync_roles(conn, platform.registry, tenant.id)  # recall is still installed
    held = await grants(platform, tenant)
    assert held.pop("receptionist") == custom - {"recall.reminder.read"}
    assert held == expected(installed)
