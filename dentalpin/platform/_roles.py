"""Tenant roles: built-in roles seeded from the installed modules' `role_grants`, custom
roles defined by a clinic, and the platform's own permissions for managing them."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._registry import Registry
from ._tables import role_permissions, roles, tenant_modules

BUILTIN_ROLES: dict[str, str] = {
    "admin": "Runs the clinic on the platform: members, roles, modules, audit",
    "dentist": "Dentist",
    "hygienist": "Dental hygienist",
    "assistant": "Dental assistant",
    "receptionist": "Front desk",
    "accountant": "Invoices, payments and reports",
    "support": "Time-limited help by the platform or a reseller: the audit log, read-only",
}
ADMIN_ROLE = "admin"
SUPPORT_ROLE = "support"
"""The default role of a support grant: what modules grant it, and the audit log."""
PLATFORM_PREFIX = "platform."
PLATFORM_PERMISSIONS: dict[str, str] = {
    "platform.member.manage": "Add, change and remove the clinic's members",
    "platform.role.manage": "Create, change and delete the clinic's custom roles",
    "platform.audit.read": "Read the clinic's audit log",
    "platform.approval.manage": "Approve or reject a reseller's destructive operations",
    "platform.sso.manage": "Configure the clinic's single sign-on providers",
    "platform.domain.manage": "Add, verify and remove the clinic's custom domains",
    "platform.support.manage": "Grant and revoke time-limited support access",
}
"""Not a module's: granted to `admin`, and assignable to custom roles like any other."""
MFA_PERMISSIONS = frozenset(
    {
        "platform.member.manage",
        "platform.role.manage",
        "platform.approval.manage",
        "platform.sso.manage",
        "platform.domain.manage",
        "platform.support.manage",
    }
)
"""Holding any of these makes a member a tenant admin: a second factor is mandatory."""

Conn = AsyncConnection | AsyncSession


async def installed_modules(conn: Conn, tenant_id: uuid.UUID) -> list[str]:
    rows = await conn.execute(
        select(tenant_modules.c.module).where(
            tenant_modules.c.tenant_id == tenant_id, tenant_modules.c.state == "installed"
        )
    )
    return sorted(rows.scalars())


def seeded_grants(registry: Registry, installed: list[str]) -> dict[str, set[str]]:
    """What each system role holds, given the tenant's installed modules."""
    grants: dict[str, set[str]] = {role: set() for role in BUILTIN_ROLES}
    grants[ADMIN_ROLE] |= set(PLATFORM_PERMISSIONS)
    grants[SUPPORT_ROLE].add("platform.audit.read")
    for name in installed:
        if name not in registry:
            continue  # a module no package provides any more grants nothing
        for role, permissions in registry.get(name).manifest.qualified_grants().items():
            grants.setdefault(role, set()).update(permissions)
    return grants


def assignable_permissions(registry: Registry, installed: list[str]) -> dict[str, str]:
    """Permissions a custom role may hold: the installed modules' and the platform's."""
    found = dict(PLATFORM_PERMISSIONS)
    for name in installed:
        if name in registry:
            found.update(registry.get(name).manifest.qualified_permissions())
    return found


async def sync_roles(
    conn: Conn, registry: Registry, tenant_id: uuid.UUID, installed: list[str] | None = None
) -> None:
    """Make the tenant's system roles hold exactly what its installed modules grant, and
    take from custom roles the permissions of modules that are no longer installed.

    `installed` overrides what `platform.tenant_modules` says (a lifecycle listener knows
    the outcome before every row is written)."""
    if installed is None:
        installed = await installed_modules(conn, tenant_id)
    grants = seeded_grants(registry, installed)
    existing = {
        row.name: row.builtin
        for row in await conn.execute(
            select(roles.c.name, roles.c.builtin).where(roles.c.tenant_id == tenant_id)
        )
    }
    new_roles = []
    for role in list(grants):
        if role in existing and not existing[role]:
            grants.pop(role)  # a clinic's custom role of that name stays the clinic's
        elif role not in existing:
            new_roles.append(
                {
                    "tenant_id": tenant_id,
                    "name": role,
                    "description": BUILTIN_ROLES.get(role, role.replace("_", " ").capitalize()),
                    "builtin": True,
                }
            )
    if new_roles:  # one statement, not one round trip per role
        await conn.execute(pg_insert(roles).values(new_roles).on_conflict_do_nothing())
    system = sorted({r for r, builtin in existing.items() if builtin} | set(grants))
    current = {
        (row.role, row.permission)
        for row in await conn.execute(
            select(role_permissions.c.role, role_permissions.c.permission).where(
                role_permissions.c.tenant_id == tenant_id, role_permissions.c.role.in_(system)
            )
        )
    }
    wanted = {(role, p) for role, permissions in grants.items() for p in permissions}
    for role, permission in sorted(current - wanted):
        await conn.execute(
            delete(role_permissions).where(
                role_permissions.c.tenant_id == tenant_id,
                role_permissions.c.role == role,
                role_permissions.c.permission == permission,
            )
        )
    missing = sorted(wanted - current)
    if missing:
        await conn.execute(
            pg_insert(role_permissions)
            .values([{"tenant_id": tenant_id, "role": r, "permission": p} for r, p in missing])
            .on_conflict_do_nothing()
        )
    await conn.execute(
        text(
            "delete from platform.role_permissions rp using platform.roles r"
            " where rp.tenant_id = :tenant and r.tenant_id = rp.tenant_id and r.name = rp.role"
            " and not r.builtin and split_part(rp.permission, '.', 1) <> 'platform'"
            " and split_part(rp.permission, '.', 1) <> all(cast(:installed as text[]))"
        ),
        {"tenant": tenant_id, "installed": installed},
    )


async def ensure_roles(conn: Conn, registry: Registry, tenant_id: uuid.UUID) -> None:
    """Seed the roles of a tenant that has none yet (created before identity, or without
    modules, so no lifecycle change announced it)."""
    has_admin = await conn.scalar(
        select(roles.c.name).where(roles.c.tenant_id == tenant_id, roles.c.name == ADMIN_ROLE)
    )
    if has_admin is None:
        await sync_roles(conn, registry, tenant_id)
