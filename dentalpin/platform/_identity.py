"""Users (platform-wide), memberships (user <-> tenant, roles, locations) and custom roles.

Who may change what is decided here, not in the HTTP layer, so the CLI and the API
follow the same rules. `grantor` is the acting member's effective permissions (None for
the operator's CLI): nobody hands out, or takes away, more than they hold themselves.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._db import TenantScope
from ._errors import Conflict, Forbidden, InvalidInput, NotFound
from ._events import MemberRemoved, publish_from_platform
from ._manifest import ROLE
from ._passwords import hash_password
from ._registry import Registry
from ._roles import (
    ADMIN_ROLE,
    assignable_permissions,
    ensure_roles,
    installed_modules,
)
from ._tables import membership_roles, memberships, refresh_tokens, role_permissions, roles, tenants
from ._tables import users as users_table

EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)+$")
LOCATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    name: str
    is_operator: bool
    disabled: bool
    mfa_enabled: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "name": self.name,
            "is_operator": self.is_operator,
            "mfa_enabled": self.mfa_enabled,
        }


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if len(value) > 254 or not EMAIL.match(value):
        raise InvalidInput(f"'{email[:80]}' is not an e-mail address")
    return value


def _user(row: Any) -> UserRecord:
    return UserRecord(
        row.id, row.email, row.name, row.is_operator, row.disabled, row.totp_enabled_at is not None
    )


async def find_user(conn: AsyncConnection, email: str) -> UserRecord | None:
    row = (
        await conn.execute(select(users_table).where(users_table.c.email == email.strip().lower()))
    ).first()
    return _user(row) if row else None


async def get_user(conn: AsyncConnection, email: str) -> UserRecord:
    user = await find_user(conn, email)
    if user is None:
        raise NotFound(
            f"no user with e-mail '{email[:80]}'; create it with `dentalpin users create`"
        )
    return user


async def user_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> UserRecord:
    row = (await conn.execute(select(users_table).where(users_table.c.id == user_id))).first()
    if row is None:
        raise NotFound("no such user")
    return _user(row)


async def create_user(
    conn: AsyncConnection,
    email: str,
    name: str = "",
    password: str | None = None,
    *,
    ctx: AuditContext,
) -> UserRecord:
    email = normalize_email(email)
    name = name.strip()
    if len(name) > 200 or any(not c.isprintable() for c in name):
        raise InvalidInput("a name is at most 200 printable characters")
    values: dict[str, Any] = {"id": uuid.uuid4(), "email": email, "name": name}
    if password is not None:
        values["password_hash"] = hash_password(password)
        values["password_changed_at"] = func.now()
    try:
        async with conn.begin_nested():
            row = (
                await conn.execute(insert(users_table).values(**values).returning(users_table))
            ).one()
    except IntegrityError:
        raise Conflict(f"a user with e-mail '{email}' already exists") from None
    await record(conn, ctx, "user.created", target=email)
    return _user(row)


async def set_password(
    conn: AsyncConnection, user_id: uuid.UUID, password: str, *, ctx: AuditContext
) -> None:
    """Change a password and end every session of the user (their refresh tokens)."""
    await conn.execute(
        update(users_table)
        .where(users_table.c.id == user_id)
        .values(
            password_hash=hash_password(password),
            password_changed_at=func.now(),
            updated_at=func.now(),
        )
    )
    await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    await record(conn, ctx, "user.password_changed", target=str(user_id))


async def set_operator(
    conn: AsyncConnection, email: str, flag: bool, *, ctx: AuditContext
) -> UserRecord:
    user = await get_user(conn, email)
    await conn.execute(
        update(users_table)
        .where(users_table.c.id == user.id)
        .values(is_operator=flag, updated_at=func.now())
    )
    await record(conn, ctx, "operator.granted" if flag else "operator.revoked", target=user.email)
    return await user_by_id(conn, user.id)


# Tenants -----------------------------------------------------------------------------


async def tenant_id_by_slug(conn: AsyncConnection, slug: str) -> uuid.UUID:
    found = await conn.scalar(
        select(tenants.c.id).where(tenants.c.slug == slug, tenants.c.status == "active")
    )
    if found is None:
        raise NotFound(f"no active clinic '{slug[:80]}'")
    result: uuid.UUID = found
    return result


# Memberships -------------------------------------------------------------------------


async def role_names(conn: AsyncConnection, tenant_id: uuid.UUID) -> set[str]:
    rows = await conn.execute(select(roles.c.name).where(roles.c.tenant_id == tenant_id))
    return set(rows.scalars())


async def permissions_of_roles(
    conn: AsyncConnection, tenant_id: uuid.UUID, names: Iterable[str]
) -> set[str]:
    rows = await conn.execute(
        select(role_permissions.c.permission).where(
            role_permissions.c.tenant_id == tenant_id,
            role_permissions.c.role.in_(sorted(set(names))),
        )
    )
    return set(rows.scalars())


async def member_roles(
    conn: AsyncConnection, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> set[str] | None:
    """The member's roles, or None when the user is not a member of the tenant."""
    exists = await conn.scalar(
        select(memberships.c.user_id).where(
            memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id
        )
    )
    if exists is None:
        return None
    rows = await conn.execute(
        select(membership_roles.c.role).where(
            membership_roles.c.tenant_id == tenant_id, membership_roles.c.user_id == user_id
        )
    )
    return set(rows.scalars())


def _check_locations(location_ids: Iterable[str]) -> list[str]:
    ids = sorted(set(location_ids))
    bad = [i for i in ids if not LOCATION_ID.match(i)]
    if bad:
        raise InvalidInput(f"location ids are 1-64 letters, digits, '-' or '_': {bad[:3]}")
    return ids


async def _admins(conn: AsyncConnection, tenant_id: uuid.UUID) -> int:
    count = await conn.scalar(
        select(func.count())
        .select_from(membership_roles)
        .where(membership_roles.c.tenant_id == tenant_id, membership_roles.c.role == ADMIN_ROLE)
    )
    return int(count or 0)


async def has_admin(conn: AsyncConnection, tenant_id: uuid.UUID) -> bool:
    return await _admins(conn, tenant_id) > 0


async def _check_grantor(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    grantor: frozenset[str] | None,
    touched_roles: set[str],
    member_current: set[str],
) -> None:
    if grantor is None:
        return
    needed = await permissions_of_roles(conn, tenant_id, touched_roles | member_current)
    beyond = sorted(needed - grantor)
    if beyond:
        raise Forbidden(
            "you cannot grant, remove or change roles holding permissions you do not hold "
            f"yourself ({', '.join(beyond[:5])})"
        )


async def set_membership(
    conn: AsyncConnection,
    registry: Registry,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    role_list: Iterable[str],
    location_ids: Iterable[str] = (),
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
    add: bool = False,
) -> set[str]:
    """Create or change a membership: its roles become `role_list` (or gain them, `add`)."""
    await ensure_roles(conn, registry, tenant_id)
    wanted = set(role_list)
    if not wanted:
        raise InvalidInput("a member needs at least one role")
    unknown = sorted(wanted - await role_names(conn, tenant_id))
    if unknown:
        raise InvalidInput(f"this clinic has no role {', '.join(map(repr, unknown))}")
    locations = _check_locations(location_ids)
    # Serialise membership changes per tenant (the last-admin rule reads, then writes).
    await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update())
    current = await member_roles(conn, tenant_id, user_id)
    if add and current:
        wanted |= current
    await _check_grantor(conn, tenant_id, grantor, wanted ^ (current or set()), current or set())
    admins_before = await _admins(conn, tenant_id)
    if current is None:
        await conn.execute(
            insert(memberships).values(user_id=user_id, tenant_id=tenant_id, location_ids=locations)
        )
        action = "membership.added"
    else:
        await conn.execute(
            update(memberships)
            .where(memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
            .values(location_ids=locations)
        )
        await conn.execute(
            delete(membership_roles).where(
                membership_roles.c.tenant_id == tenant_id,
                membership_roles.c.user_id == user_id,
                membership_roles.c.role.not_in(sorted(wanted)),
            )
        )
        action = "membership.changed"
    await conn.execute(
        pg_insert(membership_roles)
        .values([{"user_id": user_id, "tenant_id": tenant_id, "role": r} for r in sorted(wanted)])
        .on_conflict_do_nothing()
    )
    if admins_before and not await _admins(conn, tenant_id):
        raise Conflict("the clinic would have no admin left; give another member 'admin' first")
    await record(
        conn,
        ctx,
        action,
        tenant_id=tenant_id,
        target=str(user_id),
        roles=sorted(wanted),
        previous=sorted(current) if current is not None else None,
        locations=locations,
    )
    return wanted


async def remove_membership(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
) -> TenantScope | None:
    """End a membership, and tell the clinic's modules (`platform.member_removed`, in this
    transaction). The tenant it was published in, to nudge the relay with after the
    commit (`Database.published`); None when the clinic is not active."""
    clinic = (
        await conn.execute(
            select(tenants.c.status, tenants.c.schema_name, tenants.c.db_role)
            .where(tenants.c.id == tenant_id)
            .with_for_update()
        )
    ).first()
    current = await member_roles(conn, tenant_id, user_id)
    if current is None:
        raise NotFound("that user is not a member of this clinic")
    await _check_grantor(conn, tenant_id, grantor, current, current)
    admins_before = await _admins(conn, tenant_id)
    await conn.execute(
        delete(memberships).where(
            memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id
        )
    )
    if admins_before and not await _admins(conn, tenant_id):
        raise Conflict("the clinic would have no admin left; give another member 'admin' first")
    # Sessions bound to this clinic end with the membership.
    await conn.execute(
        update(refresh_tokens)
        .where(
            refresh_tokens.c.user_id == user_id,
            refresh_tokens.c.tenant_id == tenant_id,
            refresh_tokens.c.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
    )
    await record(
        conn,
        ctx,
        "membership.removed",
        tenant_id=tenant_id,
        target=str(user_id),
        previous=sorted(current),
    )
    if clinic is None or clinic.status != "active":
        return None
    scope = TenantScope(clinic.schema_name, clinic.db_role)
    await publish_from_platform(conn, scope, MemberRemoved(user_id=user_id))
    return scope


async def list_members(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            users_table.c.id,
            users_table.c.email,
            users_table.c.name,
            memberships.c.location_ids,
            func.coalesce(
                func.array_agg(membership_roles.c.role).filter(
                    membership_roles.c.role.is_not(None)
                ),
                [],
            ).label("roles"),
        )
        .select_from(
            memberships.join(users_table, users_table.c.id == memberships.c.user_id).outerjoin(
                membership_roles,
                (membership_roles.c.user_id == memberships.c.user_id)
                & (membership_roles.c.tenant_id == memberships.c.tenant_id),
            )
        )
        .where(memberships.c.tenant_id == tenant_id)
        .group_by(users_table.c.id, memberships.c.location_ids)
        .order_by(users_table.c.email)
    )
    return [
        {
            "user_id": str(r.id),
            "email": r.email,
            "name": r.name,
            "roles": sorted(r.roles),
            "location_ids": list(r.location_ids),
        }
        for r in rows
    ]


# Custom roles ------------------------------------------------------------------------


async def list_roles(
    conn: AsyncConnection, registry: Registry, tenant_id: uuid.UUID
) -> list[dict[str, Any]]:
    await ensure_roles(conn, registry, tenant_id)
    rows = await conn.execute(
        select(roles).where(roles.c.tenant_id == tenant_id).order_by(roles.c.name)
    )
    found = []
    for r in rows.all():
        found.append(
            {
                "name": r.name,
                "description": r.description,
                "builtin": r.builtin,
                "permissions": sorted(await permissions_of_roles(conn, tenant_id, [r.name])),
            }
        )
    return found


async def save_custom_role(
    conn: AsyncConnection,
    registry: Registry,
    tenant_id: uuid.UUID,
    name: str,
    permissions: Iterable[str],
    description: str = "",
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
    create: bool = True,
) -> dict[str, Any]:
    """Create (or replace the permissions of) a custom role."""
    await ensure_roles(conn, registry, tenant_id)
    if not ROLE.match(name):
        raise InvalidInput("a role name is 2-40 lower-case letters, digits or '_'")
    wanted = set(permissions)
    allowed = assignable_permissions(registry, await installed_modules(conn, tenant_id))
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise InvalidInput(
            "a custom role can only hold permissions of this clinic's installed modules; "
            f"unknown here: {', '.join(unknown[:5])}"
        )
    if len(description) > 200:
        raise InvalidInput("a role description is at most 200 characters")
    await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update())
    existing = (
        await conn.execute(
            select(roles).where(roles.c.tenant_id == tenant_id, roles.c.name == name)
        )
    ).first()
    if existing is not None and existing.builtin:
        raise Conflict(f"'{name}' is a built-in role; its permissions follow the modules")
    if create and existing is not None:
        raise Conflict(f"the clinic already has a role '{name}'")
    if not create and existing is None:
        raise NotFound(f"the clinic has no role '{name}'")
    previous = await permissions_of_roles(conn, tenant_id, [name]) if existing else set()
    if grantor is not None:
        beyond = sorted((wanted | previous) - grantor)
        if beyond:
            raise Forbidden(
                "you cannot put into a role, or take from it, permissions you do not hold "
                f"yourself ({', '.join(beyond[:5])})"
            )
    if existing is None:
        await conn.execute(
            insert(roles).values(
                tenant_id=tenant_id, name=name, description=description, builtin=False
            )
        )
    else:
        await conn.execute(
            update(roles)
            .where(roles.c.tenant_id == tenant_id, roles.c.name == name)
            .values(description=description)
        )
        await conn.execute(
            delete(role_permissions).where(
                role_permissions.c.tenant_id == tenant_id, role_permissions.c.role == name
            )
        )
    if wanted:
        await conn.execute(
            insert(role_permissions).values(
                [{"tenant_id": tenant_id, "role": name, "permission": p} for p in sorted(wanted)]
            )
        )
    await record(
        conn,
        ctx,
        "role.created" if existing is None else "role.changed",
        tenant_id=tenant_id,
        target=name,
        permissions=sorted(wanted),
        previous=sorted(previous),
    )
    return {
        "name": name,
        "description": description,
        "builtin": False,
        "permissions": sorted(wanted),
    }


async def delete_custom_role(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    name: str,
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
) -> None:
    await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update())
    existing = (
        await conn.execute(
            select(roles).where(roles.c.tenant_id == tenant_id, roles.c.name == name)
        )
    ).first()
    if existing is None:
        raise NotFound(f"the clinic has no role '{name}'")
    if existing.builtin:
        raise Conflict(f"'{name}' is a built-in role and cannot be deleted")
    held = await permissions_of_roles(conn, tenant_id, [name])
    if grantor is not None and held - grantor:
        raise Forbidden("you cannot delete a role holding permissions you do not hold yourself")
    await conn.execute(delete(roles).where(roles.c.tenant_id == tenant_id, roles.c.name == name))
    await record(conn, ctx, "role.deleted", tenant_id=tenant_id, target=name)
