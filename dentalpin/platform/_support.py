"""Support grants: a clinic admin lets an operator or a reseller admin act in the clinic
for a limited time, with roles the admin chooses (by default `support`: the audit log and
what modules grant that role), and can revoke it at any moment.

A grant is not a membership and is never carried by a token: the principal loader
(`_auth.load_principal`) looks for a valid grant on every request, so an expired or
revoked grant stops working at once. Support sessions need a second factor; every
request made through a grant is written to the clinic's audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._audit import AuditContext, record
from ._clients import is_reseller_admin, resellers_of
from ._errors import Conflict, InvalidInput, NotFound
from ._identity import _check_grantor, get_user, member_roles, role_names
from ._mail import Mail, compose
from ._roles import SUPPORT_ROLE, sync_roles
from ._runtime import Platform
from ._tables import refresh_tokens, reseller_admins, support_grants, tenants
from ._tables import users as users_table

MIN_DURATION = timedelta(minutes=5)


def _state(row: Any, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at <= now:
        return "expired"
    # Its grantee left the owning reseller (or the operators): it no longer lets them in.
    return "active" if row.entitled else "lapsed"


def _as_dict(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "grantee": row.email,
        "grantee_id": str(row.grantee_id),
        "roles": list(row.roles),
        "reason": row.reason,
        "state": _state(row, now),
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def _listing() -> Any:
    entitled = or_(
        users_table.c.is_operator,
        exists().where(
            reseller_admins.c.user_id == support_grants.c.grantee_id,
            reseller_admins.c.reseller_id == tenants.c.reseller_id,
        ),
    )
    return (
        select(support_grants, users_table.c.email, entitled.label("entitled"))
        .join(users_table, users_table.c.id == support_grants.c.grantee_id)
        .join(tenants, tenants.c.id == support_grants.c.tenant_id)
    )


def check_expiry(platform: Platform, expires_at: datetime) -> datetime:
    if expires_at.tzinfo is None:
        raise InvalidInput("give the expiry with a time zone (e.g. 2026-12-01T18:00:00Z)")
    now = datetime.now(UTC)
    longest = timedelta(seconds=platform.settings.support_grant_max_s)
    if expires_at < now + MIN_DURATION:
        raise InvalidInput("a support grant must last at least 5 minutes from now")
    if expires_at > now + longest:
        raise InvalidInput(
            f"a support grant lasts at most {longest.total_seconds() / 3600:g} hours; "
            "grant again when it ends if support needs longer"
        )
    return expires_at


async def grant_support(
    conn: AsyncConnection,
    platform: Platform,
    tenant_id: uuid.UUID,
    grantee_email: str,
    expires_at: datetime,
    role_list: Iterable[str] = (SUPPORT_ROLE,),
    reason: str = "",
    *,
    ctx: AuditContext,
    grantor: frozenset[str] | None = None,
) -> tuple[dict[str, Any], Mail]:
    """Give an operator or reseller admin time-limited access; the grant and the message
    that tells the grantee (sent by the caller after the commit)."""
    expires_at = check_expiry(platform, expires_at)
    wanted = set(role_list) or {SUPPORT_ROLE}
    if len(reason) > 500 or any(not c.isprintable() for c in reason):
        raise InvalidInput("a reason is at most 500 printable characters")
    grantee = await get_user(conn, grantee_email)
    if not grantee.is_operator and not await is_reseller_admin(conn, grantee.id):
        raise InvalidInput(
            "support access is for the platform's operators and resellers' admins; "
            "add your own staff as members (POST /api/v1/invitations)"
        )
    # Serialise grants per clinic: one valid grant per grantee, checked then written.
    clinic = (
        await conn.execute(
            select(tenants.c.slug, tenants.c.name, tenants.c.reseller_id)
            .where(tenants.c.id == tenant_id, tenants.c.status == "active")
            .with_for_update()
        )
    ).first()
    if clinic is None:
        raise NotFound("this clinic is not active")
    if not grantee.is_operator and clinic.reseller_id not in await resellers_of(conn, grantee.id):
        raise InvalidInput(
            f"'{grantee.email}' administers another reseller, not the one this clinic belongs "
            "to; support access goes to the platform's operators or to your own reseller"
        )
    if SUPPORT_ROLE not in await role_names(conn, tenant_id):
        await sync_roles(conn, platform.registry, tenant_id)  # a clinic older than the role
    unknown = sorted(wanted - await role_names(conn, tenant_id))
    if unknown:
        raise InvalidInput(f"this clinic has no role {', '.join(map(repr, unknown))}")
    await _check_grantor(conn, tenant_id, grantor, wanted, set())
    if await member_roles(conn, tenant_id, grantee.id) is not None:
        raise Conflict(f"'{grantee.email}' is a member of this clinic already")
    active = await conn.scalar(
        select(support_grants.c.id).where(
            support_grants.c.tenant_id == tenant_id,
            support_grants.c.grantee_id == grantee.id,
            support_grants.c.revoked_at.is_(None),
            support_grants.c.expires_at > func.now(),
        )
    )
    if active is not None:
        raise Conflict(
            f"'{grantee.email}' already has valid support access ({active}); revoke it "
            f"first (DELETE /api/v1/support-grants/{active})"
        )
    grant_id = uuid.uuid4()
    await conn.execute(
        insert(support_grants).values(
            id=grant_id,
            tenant_id=tenant_id,
            grantee_id=grantee.id,
            roles=sorted(wanted),
            reason=reason,
            granted_by=ctx.actor_id,
            expires_at=expires_at,
        )
    )
    await record(
        conn,
        ctx,
        "support.granted",
        tenant_id=tenant_id,
        target=grantee.email,
        grant=str(grant_id),
        roles=sorted(wanted),
        expires_at=expires_at.isoformat(),
        reason=reason,
    )
    row = (await conn.execute(_listing().where(support_grants.c.id == grant_id))).one()
    mail = compose(
        grantee.email,
        f"Support access to {clinic.name}",
        "support_granted",
        name=grantee.name or grantee.email,
        granter=ctx.actor or "The clinic",
        clinic=clinic.name,
        slug=clinic.slug,
        roles=sorted(wanted),
        expires=expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        link_expires_at=expires_at,
    )
    return _as_dict(row, datetime.now(UTC)), mail


async def list_grants(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        _listing()
        .where(support_grants.c.tenant_id == tenant_id)
        .order_by(support_grants.c.created_at.desc())
        .limit(500)
    )
    now = datetime.now(UTC)
    return [_as_dict(r, now) for r in rows]


async def revoke_grant(
    conn: AsyncConnection, tenant_id: uuid.UUID, grant_id: uuid.UUID, *, ctx: AuditContext
) -> dict[str, Any]:
    """End a grant now (and the grantee's sessions in the clinic)."""
    row = (
        await conn.execute(
            _listing()
            .where(support_grants.c.id == grant_id, support_grants.c.tenant_id == tenant_id)
            .with_for_update(of=support_grants)
        )
    ).first()
    if row is None:
        raise NotFound("this clinic has no such support grant")
    if row.revoked_at is None:
        await conn.execute(
            update(support_grants)
            .where(support_grants.c.id == grant_id)
            .values(revoked_at=func.now(), revoked_by=ctx.actor_id)
        )
        await conn.execute(
            update(refresh_tokens)
            .where(
                refresh_tokens.c.user_id == row.grantee_id,
                refresh_tokens.c.tenant_id == tenant_id,
                refresh_tokens.c.revoked_at.is_(None),
            )
            .values(revoked_at=func.now())
        )
        await record(
            conn,
            ctx,
            "support.revoked",
            tenant_id=tenant_id,
            target=row.email,
            grant=str(grant_id),
        )
    row = (await conn.execute(_listing().where(support_grants.c.id == grant_id))).one()
    return _as_dict(row, datetime.now(UTC))
