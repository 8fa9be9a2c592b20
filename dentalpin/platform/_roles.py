"""Tenant roles: built-in roles seeded from the installed modules' `role_grants`, custom
roles defined by a clinic, and the platform's own permissions for managing them."""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._registry import Registry
from ._tables import roles, tenant_modules

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
    "platform.module.manage": "Install, upgrade, uninstall and restore the clinic's modules",
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
        "platform.module.manage",
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
    """What each system role holds, given the tenant's installed modules: the offer
    (`_offer`, the one statement of the rules) filtered as `_SYNC_ROLES` filters it."""
    offer = _offer(registry)
    wanted = {"", *installed}
    grants: dict[str, set[str]] = {}
    for module, role in zip(offer.roles["role_modules"], offer.roles["role_names"], strict=True):
        if module in wanted:
            grants.setdefault(role, set())
    for module, role, permission in zip(*offer.grants.values(), strict=True):
        if module in wanted:
            grants[role].add(permission)
    return grants


def assignable_permissions(registry: Registry, installed: list[str]) -> dict[str, str]:
    """Permissions a custom role may hold: the installed modules' and the platform's."""
    found = dict(PLATFORM_PERMISSIONS)
    for name in installed:
        if name in registry:
            found.update(registry.get(name).manifest.qualified_permissions())
    return found


# The whole sync in one statement. `installed` is what the tenant has once the caller's
# change is done; `granted` and `seeded` are what the system roles hold and which system
# roles exist, given it. A role name a clinic's custom role already has stays the clinic's
# (neither created nor granted to); system roles lose what is no longer granted and gain
# what is; custom roles lose the permissions of modules no longer installed. The sub-
# statements touch disjoint rows (system against custom roles), and the foreign keys of
# permissions granted to a role created here are checked at the statement's end, after it.
_SYNC_ROLES = text(
    """
    with installed(module) as (
        select tm.module from platform.tenant_modules tm
         where tm.tenant_id = cast(:tenant as uuid) and tm.state = 'installed'
           and tm.module <> all(cast(:removing as text[]))
        union
        select unnest(cast(:adding as text[]))
    ), granted(role, permission) as (
        select distinct o.role, o.permission
          from unnest(cast(:grant_modules as text[]), cast(:grant_roles as text[]),
                      cast(:grant_permissions as text[])) as o(module, role, permission)
         where o.module = '' or o.module in (select i.module from installed i)
    ), seeded(name, description) as (
        select distinct on (n.name) n.name, n.description
          from unnest(cast(:role_modules as text[]), cast(:role_names as text[]),
                      cast(:role_descriptions as text[])) as n(module, name, description)
         where n.module = '' or n.module in (select i.module from installed i)
         order by n.name
    ), existing as (
        select r.name, r.builtin from platform.roles r where r.tenant_id = cast(:tenant as uuid)
    ), created as (
        insert into platform.roles (tenant_id, name, description, builtin)
        select cast(:tenant as uuid), s.name, s.description, true from seeded s
         where not exists (select 1 from existing e where e.name = s.name)
        on conflict do nothing
        returning name
    ), system(name) as (
        select e.name from existing e where e.builtin
        union
        select s.name from seeded s
         where not exists (select 1 from existing e where e.name = s.name)
    ), wanted as (
        select g.role, g.permission from granted g where g.role in (select name from system)
    ), revoked as (
        delete from platform.role_permissions rp
         where rp.tenant_id = cast(:tenant as uuid) and rp.role in (select name from system)
           and not exists (
                select 1 from wanted w where w.role = rp.role and w.permission = rp.permission)
        returning 1
    ), added as (
        insert into platform.role_permissions (tenant_id, role, permission)
        select cast(:tenant as uuid), w.role, w.permission from wanted w
        on conflict do nothing
        returning 1
    ), stripped as (
        delete from platform.role_permissions rp using platform.roles r
         where rp.tenant_id = cast(:tenant as uuid) and r.tenant_id = rp.tenant_id
           and r.name = rp.role and not r.builtin
           and split_part(rp.permission, '.', 1) <> 'platform'
           and split_part(rp.permission, '.', 1) not in (select i.module from installed i)
        returning 1
    )
    select (select count(*) from created) as created, (select count(*) from revoked) as revoked,
           (select count(*) from added) as added, (select count(*) from stripped) as stripped
    """
)


@dataclass(frozen=True)
class _Offer:
    """Every grant and system role any module of a registry could bring, tagged with its
    module ('' for the platform's own), as the arrays `_SYNC_ROLES` filters by what is
    installed. Built once per registry: manifests do not change in a process."""

    grants: dict[str, list[str]]
    roles: dict[str, list[str]]


_offers: weakref.WeakKeyDictionary[Registry, _Offer] = weakref.WeakKeyDictionary()


def _offer(registry: Registry) -> _Offer:
    offer = _offers.get(registry)
    if offer is None:
        grants: list[tuple[str, str, str]] = [
            ("", ADMIN_ROLE, p) for p in sorted(PLATFORM_PERMISSIONS)
        ] + [("", SUPPORT_ROLE, "platform.audit.read")]
        roles: list[tuple[str, str, str]] = [("", r, d) for r, d in BUILTIN_ROLES.items()]
        for spec in registry:
            for role, permissions in sorted(spec.manifest.qualified_grants().items()):
                grants += [(spec.name, role, p) for p in sorted(permissions)]
                description = BUILTIN_ROLES.get(role, role.replace("_", " ").capitalize())
                roles.append((spec.name, role, description))
        offer = _Offer(
            grants={
                "grant_modules": [m for m, _, _ in grants],
                "grant_roles": [r for _, r, _ in grants],
                "grant_permissions": [p for _, _, p in grants],
            },
            roles={
                "role_modules": [m for m, _, _ in roles],
                "role_names": [r for _, r, _ in roles],
                "role_descriptions": [d for _, _, d in roles],
            },
        )
        _offers[registry] = offer
    return offer


async def sync_roles(
    conn: Conn,
    registry: Registry,
    tenant_id: uuid.UUID,
    *,
    adding: Iterable[str] = (),
    removing: Iterable[str] = (),
) -> None:
    """Make the tenant's system roles hold exactly what its installed modules grant, and
    take from custom roles the permissions of modules that are no longer installed.

    Installed means the `installed` rows of `platform.tenant_modules`, plus `adding` and
    minus `removing` (a lifecycle listener knows the outcome before every row is written).
    One round trip (`_SYNC_ROLES`); `seeded_grants` computes the same outcome in Python."""
    offer = _offer(registry)
    await conn.execute(
        _SYNC_ROLES,
        {
            "tenant": tenant_id,
            "adding": sorted(adding),
            "removing": sorted(removing),
            **offer.grants,
            **offer.roles,
        },
    )


async def ensure_roles(conn: Conn, registry: Registry, tenant_id: uuid.UUID) -> None:
    """Seed the roles of a tenant that has none yet (created before identity, or without
    modules, so no lifecycle change announced it)."""
    has_admin = await conn.scalar(
        select(roles.c.name).where(roles.c.tenant_id == tenant_id, roles.c.name == ADMIN_ROLE)
    )
    if has_admin is None:
        await sync_roles(conn, registry, tenant_id)
